"""Texts the API server wrote, made fit for a message, a log line or an audit record.

A server may echo the token under review, whole or in part, in any text it sends back (an error,
a Status message, a reason), and the official client logs response bodies at DEBUG in some
versions. Everything here exists so that no text reaching a message, a log line or an audit record
carries the token or a piece of it: server texts are capped and scrubbed (`scrub`), exceptions
nobody expected are logged by type and stack only (`log_unexpected`), and the client's own loggers
drop the records that would show a body.
"""

from __future__ import annotations

import logging
import traceback

logger = logging.getLogger("flask_bindcar")

MAX_SERVER_TEXT = 512
"""Characters kept of a text the server supplied for a message (an error, a Status message)."""
ECHO_MIN = 16
"""Runs of this many characters of the token, or more, are removed from what the server says."""
REDACTED = "[REDACTED]"


class _DropResponseBodies(logging.Filter):
    """Some versions of the client log response bodies at DEBUG; a TokenReview echoes the token."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "body" not in str(record.msg).lower()


for _name in ("kubernetes.client.rest", "kubernetes.client.api_client"):
    logging.getLogger(_name).addFilter(_DropResponseBodies())


def echo_spans(text: str, token: str) -> list[tuple[int, int]]:
    """Where ``text`` holds runs of `ECHO_MIN` or more characters of ``token`` (all of a shorter token)."""
    n = min(ECHO_MIN, len(token))
    spans: list[tuple[int, int]] = []
    if n == 0:
        return spans
    for i in range(len(text) - n + 1):
        if text[i : i + n] in token:
            if spans and i <= spans[-1][1]:
                spans[-1] = (spans[-1][0], i + n)
            else:
                spans.append((i, i + n))
    return spans


def scrub(text: str, token: str, limit: int = MAX_SERVER_TEXT) -> str:
    """A text from the server, fit for a message: at most about ``limit`` characters, no piece of the token.

    A server may echo a token whole, in part or cut short (a message it truncated itself), so
    every run of `ECHO_MIN` or more characters that also occurs in the token becomes
    ``[REDACTED]``. The text is cut first, so the work is bounded whatever the server sent.
    """
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    spans = echo_spans(text, token)
    for start, end in reversed(spans):
        text = text[:start] + REDACTED + text[end:]
    return text


def log_unexpected(where: str, e: BaseException) -> None:
    """Log an exception nobody expected by its type and stack only: its message may quote the server."""
    stack = "".join(traceback.format_tb(e.__traceback__)).rstrip()
    logger.error("unexpected %s in %s\n%s", type(e).__name__, where, stack)

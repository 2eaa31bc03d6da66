"""``python -m flask_bindcar doctor|review``: troubleshooting with the configuration from the environment.

``doctor`` checks the configuration, the Kubernetes client, the API server, the permission to
create TokenReviews (and SubjectAccessReviews, with ``BIND_AUTHZ``) and a probe review; exit status
1 when a check fails. It sees no Flask views, so for RBAC given per view it points to ``flask --app
... bindcar doctor``, which finds them. ``review`` reads a token, or a whole ``Bearer <token>``
header value, from standard input (or ``--token-file``; never from the command line, where ``ps``
would show it) and prints each step of the chain and the answer a client would get.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flask_bindcar.config import AuthConfig
from flask_bindcar.doctor import doctor
from flask_bindcar.errors import ConfigError
from flask_bindcar.review import Route, review


def run_doctor(config: AuthConfig, as_json: bool, threads: int | None = None, authorization: bool | None = None) -> int:
    """``authorization``: whether a view has its own RBAC; None when the views are not known here."""
    report = doctor(config, threads=threads, authorization=authorization)
    print(report.json() if as_json else report.text())
    return 0 if report.ok else 1


def read_token(token_file: Path | None) -> str:
    if token_file is not None:
        return token_file.read_text().strip()
    if sys.stdin.isatty():
        print("Paste the token, then press Ctrl-D (it is not echoed back).", file=sys.stderr)
    return sys.stdin.read().strip()


def run_review(config: AuthConfig, token: str, as_json: bool, route: Route | None = None) -> int:
    report, _, error = review(config, token, route)
    print(report.json() if as_json else report.text())
    return 0 if error is None else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flask_bindcar", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    doctor_cmd = commands.add_parser("doctor", help="check the configuration and the cluster end to end")
    doctor_cmd.add_argument("--json", action="store_true", help="print JSON for machines")
    doctor_cmd.add_argument(
        "--threads",
        type=int,
        help="the server's threads per worker (gunicorn --threads), to check the TokenReview bulkhead against; "
        "default: read from GUNICORN_CMD_ARGS",
    )
    review_cmd = commands.add_parser(
        "review", help="explain what happens to a token or a 'Bearer <token>' header value (read from stdin)"
    )
    review_cmd.add_argument("--token-file", type=Path, help="read the token from this file instead of stdin")
    review_cmd.add_argument("--json", action="store_true", help="print JSON for machines")
    review_cmd.add_argument("--method", default="GET", help="with --path: the request's method (default GET)")
    review_cmd.add_argument("--path", help="the request's path: report the RBAC verdict of BIND_AUTHZ for it too")
    args = parser.parse_args(argv)
    try:
        config = AuthConfig.load()
    except ConfigError as e:
        print(f"✘ configuration: {e}", file=sys.stderr)
        return 1
    if args.command == "doctor":
        return run_doctor(config, args.json, args.threads, authorization=None)  # no app, no views to look at
    route = Route(args.method.upper(), args.path, "", rbac=config.rbac) if args.path is not None else None
    return run_review(config, read_token(args.token_file), args.json, route)


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m soak.report result.json``: a run's figures as Markdown tables, for docs/reliability.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def markdown(result: dict[str, Any]) -> str:
    t = result["totals"]
    v = t["verdicts"]
    lines = [
        f"Run of {result['started']}: {result['mode']}, {result['load_seconds']:.0f} s of load "
        f"({result['wall_seconds']:.0f} s with setup), {t['requests']} requests, "
        f"p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, slowest {t['max_ms']} ms.",
        "",
        "| wrong allows | wrong denies | undocumented answers | hung | passed |",
        "|---|---|---|---|---|",
        f"| {v.get('wrong_allow', 0)} | {v.get('wrong_deny', 0)} | {v.get('undocumented', 0)} "
        f"| {v.get('hung', 0)} | {'yes' if result['passed'] else 'no'} |",
        "",
        "| phase (from, s) | requests | status codes | p50 ms | p99 ms | max ms | wrong | TokenReviews/s, SARs/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rates = result.get("reviews_per_second", {})
    phase_rates = [r["rates"] for r in rates.get("phases", [])] or [None] * len(result["phases"])
    for p, rate in zip(result["phases"], phase_rates, strict=True):
        codes = ", ".join(f"{k}: {n}" for k, n in p["statuses"].items())
        wrong = sum(n for k, n in p["verdicts"].items() if k != "ok")
        lines.append(
            f"| {p['phase']} ({p['start']:.0f}) | {p['requests']} | {codes} | {p['p50_ms']} | {p['p99_ms']} "
            f"| {p['max_ms']} | {wrong} | {_rates(rate)} |"
        )
    if rates.get("run"):
        lines += [
            "",
            f"kube-apiserver served {rates['run']['tokenreviews']:.1f} TokenReviews and "
            f"{rates['run']['subjectaccessreviews']:.1f} SubjectAccessReviews per second over the run "
            "(its own `apiserver_request_total`).",
        ]
    lines += [
        "",
        "| fault | at (s) | down until ready (s) | fresh token accepted after ready (s) |",
        "|---|---|---|---|",
    ]
    for r in result["recoveries"]:
        lines.append(f"| {r['fault']} | {r['start']:.0f} | {r['down_s']:.1f} | {r['recovery_s']} |")
    rss = result["worker_rss_mib"]
    lines += ["", "| worker | RSS first 10 % (MiB) | RSS last 10 % (MiB) | growth (MiB) |", "|---|---|---|---|"]
    for pid, start in rss["start"].items():
        lines.append(f"| {pid} | {start} | {rss['end'].get(pid, '-')} | {rss['growth'].get(pid, '-')} |")
    return "\n".join(lines) + "\n"


def _rates(rate: dict[str, float] | None) -> str:
    """TokenReviews and SubjectAccessReviews per second; a dash where kube-apiserver was down."""
    if not rate:
        return "—"
    return f"{rate['tokenreviews']:.1f}, {rate['subjectaccessreviews']:.1f}"


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))

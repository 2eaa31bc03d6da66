"""``python -m soak --seconds N --out build/soak/ [--full]``: one soak run; exit 1 unless it passed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from soak.run import Soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=150.0, help="seconds of load (default 150)")
    parser.add_argument("--out", type=Path, default=Path("build/soak"), help="result.json, timeline.png, logs")
    parser.add_argument("--full", action="store_true", help="the full fault schedule (needs 300 s or more)")
    parser.add_argument(
        "--adapter", choices=("flask", "wsgi"), default="flask", help="BindcarAuth or the WSGI middleware"
    )
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second offered (default 150)")
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    args = parser.parse_args(argv)
    if args.full and args.seconds < 300:
        parser.error("--full needs --seconds 300 or more (its longest outage is the stale window + 15 s)")
    if not args.full and args.seconds < 40:
        parser.error("--seconds must be 40 or more")
    soak = Soak(
        args.seconds, args.out, full=args.full, adapter=args.adapter, rate=args.rate, max_requests=args.max_requests
    )
    result = soak.run()
    try:
        from soak.plot import timeline

        timeline(result, args.out / "timeline.png")
    except ImportError as e:  # matplotlib is the bench extra's
        print(f"soak: no timeline picture ({e}); `make .venv/.installed-bench` installs matplotlib", file=sys.stderr)
    summary = {
        k: result[k]
        for k in ("passed", "mode", "load_seconds", "wall_seconds", "totals", "recoveries", "failure_count")
    }
    summary["worker_rss_mib"] = result["worker_rss_mib"]
    print(json.dumps(summary, indent=2))
    for failure in result["failures"][:20]:
        print("WRONG:", json.dumps(failure), file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

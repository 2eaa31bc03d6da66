"""``python -m flask_bindcar.testing``: run the kube-apiserver stand-in until interrupted.

Prints its URL, the kubeconfig to point a client at it, and sample tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from flask_bindcar.testing.cluster import FakeCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flask_bindcar.testing", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write ca.crt and kubeconfig (default: a temporary directory)"
    )
    parser.add_argument("--audience", default="bindcar", help="audience of the sample tokens (default: bindcar)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)

    cluster = FakeCluster(port=args.port, workdir=args.dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with cluster:
        kubeconfig = cluster.write_kubeconfig(cluster.workdir / "kubeconfig")
        samples = {
            "dns-system/external-dns": cluster.token("dns-system", "external-dns", audiences=[args.audience]),
            "default/my-app": cluster.token("default", "my-app", audiences=[args.audience]),
        }
        if args.json:
            print(
                json.dumps(
                    {"url": cluster.url, "kubeconfig": str(kubeconfig), "ca": str(cluster.ca_path), "tokens": samples}
                )
            )
        else:
            print(f"FakeCluster serving at {cluster.url}")
            print(f"kubeconfig: {kubeconfig}")
            print(f"  export KUBECONFIG={kubeconfig}")
            for who, token in samples.items():
                print(f"token for {who} (audience {args.audience}):\n  {token}")
            print("Ctrl-C to stop.")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m flask_bindcar.testing``: run the kube-apiserver stand-in until interrupted.

Prints its URL, the kubeconfig to point a client at it, and sample tokens. With ``--real`` it runs
a `RealCluster` (etcd and kube-apiserver from ``KUBEBUILDER_ASSETS``) instead, and also prints a
cluster-admin kubeconfig for kubectl.
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
from flask_bindcar.testing.real import AssetsMissing, RealCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flask_bindcar.testing", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write ca.crt and kubeconfig (default: a temporary directory)"
    )
    parser.add_argument("--audience", default="bindcar", help="audience of the sample tokens (default: bindcar)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--real",
        action="store_true",
        help="run a real etcd and kube-apiserver (RealCluster, binaries from KUBEBUILDER_ASSETS) instead",
    )
    args = parser.parse_args(argv)

    cluster: FakeCluster | RealCluster
    if args.real:
        if args.port:
            parser.error("--port is for the stand-in; --real picks free ports")
        try:
            cluster = RealCluster(workdir=args.dir)
        except AssetsMissing as e:
            print(e, file=sys.stderr)
            return 2
    else:
        cluster = FakeCluster(port=args.port, workdir=args.dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with cluster:
        kubeconfig = cluster.write_kubeconfig(cluster.workdir / "kubeconfig")
        samples = {
            "dns-system/external-dns": cluster.token("dns-system", "external-dns", audiences=[args.audience]),
            "default/my-app": cluster.token("default", "my-app", audiences=[args.audience]),
        }
        info = {"url": cluster.url, "kubeconfig": str(kubeconfig), "ca": str(cluster.ca_path), "tokens": samples}
        if isinstance(cluster, RealCluster):
            info["admin_kubeconfig"] = str(cluster.admin_kubeconfig)
            info["kubectl"] = str(cluster.assets / "kubectl")
        if args.json:
            print(json.dumps(info))
        else:
            print(f"{type(cluster).__name__} serving at {cluster.url}")
            print(f"kubeconfig: {kubeconfig}")
            print(f"  export KUBECONFIG={kubeconfig}")
            if isinstance(cluster, RealCluster):
                print(f"cluster-admin for kubectl: {info['kubectl']} --kubeconfig {info['admin_kubeconfig']}")
            for who, token in samples.items():
                print(f"token for {who} (audience {args.audience}):\n  {token}")
            print("Ctrl-C to stop.")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

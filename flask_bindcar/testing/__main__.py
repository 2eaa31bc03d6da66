"""``python -m flask_bindcar.testing``: run the kube-apiserver stand-in until interrupted.

Prints its URL, the kubeconfig to point a client at it, and sample tokens. kubectl pointed at that
kubeconfig manages ServiceAccounts, tokens, Namespaces and RBAC (``kubectl apply -f`` a ClusterRole
and its binding, ``kubectl create clusterrolebinding ...``): a grant counts at the next
SubjectAccessReview, a deleted binding revokes it. With ``--real`` it runs a `RealCluster` (etcd
and kube-apiserver from ``KUBEBUILDER_ASSETS``) instead, and also prints a cluster-admin
kubeconfig for kubectl.
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
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="NS/NAME[:AUD,...]",
        help="mint a token for ServiceAccount NS/NAME (created if missing) with these audiences (default: "
        "--audience); repeatable, and replaces the two sample tokens",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--real",
        action="store_true",
        help="run a real etcd and kube-apiserver (RealCluster, binaries from KUBEBUILDER_ASSETS) instead",
    )
    args = parser.parse_args(argv)
    wanted: list[tuple[str, str, list[str]]] = []
    for spec in args.token:
        who, _, auds = spec.partition(":")
        ns, _, name = who.partition("/")
        if not ns or not name or "/" in name:
            parser.error(f"--token {spec!r}: expected NS/NAME[:AUD,...]")
        wanted.append((ns, name, [a for a in auds.split(",") if a] if auds else [args.audience]))
    if args.dir is not None:
        args.dir = args.dir.resolve()  # the kubeconfig names the CA by absolute path

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
        if not wanted:
            wanted = [("dns-system", "external-dns", [args.audience]), ("default", "my-app", [args.audience])]
        minted = [(f"{ns}/{name}", auds, cluster.token(ns, name, audiences=auds)) for ns, name, auds in wanted]
        samples = {who: token for who, _, token in minted}
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
            for who, auds, token in minted:
                print(f"token for {who} (audience {','.join(auds)}):\n  {token}")
            print("Ctrl-C to stop.")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

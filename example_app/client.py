"""A caller of the example API, as the client Deployment (``example_app/deploy/client.yaml``) runs it.

``python -m example_app.client URL [--token-file PATH] [--interval SECONDS]`` lists the zones with
the pod's projected ServiceAccount token and prints ``<status> <body>``; with ``--interval`` it
does so forever, every so many seconds, picking up each token the kubelet rotates in. Exits 1 when
a single call is not answered with success.
"""

from __future__ import annotations

import argparse
import sys
import time

import requests

from flask_bindcar.client import DEFAULT_TOKEN_PATH, ServiceAccountTokenAuth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_app.client", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the API's base URL, such as http://bindcar-example.dns-system.svc:8080")
    parser.add_argument("--token-file", default=DEFAULT_TOKEN_PATH, help=f"default: {DEFAULT_TOKEN_PATH}")
    parser.add_argument("--interval", type=float, default=0, help="seconds between calls; 0 (default) calls once")
    args = parser.parse_args(argv)

    session = requests.Session()
    session.auth = ServiceAccountTokenAuth(args.token_file, audience_hint="bindcar")
    while True:
        try:
            response = session.get(f"{args.url.rstrip('/')}/api/v1/zones", timeout=10)
        except requests.RequestException as e:  # the token file too: TokenFileError is one
            print(f"error {e}", flush=True)
            ok = False
        else:
            print(response.status_code, response.text.strip(), flush=True)
            ok = response.ok
        if not args.interval:
            return 0 if ok else 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())

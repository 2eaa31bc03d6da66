"""gunicorn settings for the example app.

``gunicorn -c example_app/gunicorn.conf.py 'example_app.app:create_app()'``
"""

import os
import ssl

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8080")
# HTTPS when GUNICORN_CERTFILE and GUNICORN_KEYFILE name a certificate and its key, as the Deployment
# sets them (its kubernetes.io/tls Secret): callers' tokens never cross the network in clear text.
# Plain HTTP when neither is set, as `make demo` serves on 127.0.0.1. A pair that does not load
# stops gunicorn here, at start, not at each handshake. The sync and gthread workers load the pair
# for each new connection, so a renewed Secret is served without a restart.
certfile = os.environ.get("GUNICORN_CERTFILE") or None
keyfile = os.environ.get("GUNICORN_KEYFILE") or None
if bool(certfile) != bool(keyfile):
    raise SystemExit("example_app/gunicorn.conf.py: set both GUNICORN_CERTFILE and GUNICORN_KEYFILE, or neither")
if certfile:
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except OSError as e:  # ssl.SSLError is one
        raise SystemExit(
            f"example_app/gunicorn.conf.py: cannot serve HTTPS with {certfile} and {keyfile}: {e}"
        ) from None
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# The TokenReview bulkhead stays below the thread count, so a hanging API server can hold at most
# half the threads: cache hits and the health probes always find one free. This file runs in the
# master before the app loads, so the workers (and a --preload) see the variable. An explicit
# BIND_TOKEN_REVIEW_MAX_INFLIGHT wins; `python -m flask_bindcar doctor --threads N` checks it.
os.environ.setdefault("BIND_TOKEN_REVIEW_MAX_INFLIGHT", str(max(1, threads // 2)))
accesslog = "-"
# gunicorn's own format, with the caller where %(u)s stands: flask-bindcar sets REMOTE_USER to the
# ServiceAccount's username, and gunicorn's %(u)s reads only HTTP Basic credentials, so the line
# takes it from the environ. "-" when nobody was authenticated (a probe, a 401, Basic mode):
#   10.0.0.7 - system:serviceaccount:dns-system:external-dns [...] "GET /api/v1/zones HTTP/1.1" 200 ...
# Like the default, it logs no Authorization header; keep it that way.
access_log_format = '%(h)s %(l)s %({remote_user}e)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
graceful_timeout = 5
# A request header longer than this never reaches the app (gunicorn answers 431 itself).
limit_request_field_size = 8190

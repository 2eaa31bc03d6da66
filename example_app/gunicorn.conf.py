"""gunicorn settings for the example app.

``gunicorn -c example_app/gunicorn.conf.py 'example_app.app:create_app()'``
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# The TokenReview bulkhead stays below the thread count, so a hanging API server can hold at most
# half the threads: cache hits and the health probes always find one free. This file runs in the
# master before the app loads, so the workers (and a --preload) see the variable. An explicit
# BIND_TOKEN_REVIEW_MAX_INFLIGHT wins; `python -m flask_bindcar doctor --threads N` checks it.
os.environ.setdefault("BIND_TOKEN_REVIEW_MAX_INFLIGHT", str(max(1, threads // 2)))
accesslog = "-"
# The default access log format has no Authorization header; keep it that way.
graceful_timeout = 5
# A request header longer than this never reaches the app (gunicorn answers 431 itself).
limit_request_field_size = 8190

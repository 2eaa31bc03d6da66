"""gunicorn settings for the example app.

``gunicorn -c example_app/gunicorn.conf.py 'example_app.app:create_app()'``
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
accesslog = "-"
# The default access log format has no Authorization header; keep it that way.
graceful_timeout = 5
# A request header longer than this never reaches the app (gunicorn answers 400 itself).
limit_request_field_size = 8190

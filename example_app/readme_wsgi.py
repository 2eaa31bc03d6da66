import json


def app(environ, start_response):
    identity = environ.get("bindcar.identity")  # set by BindcarMiddleware; None on exempt paths
    body = json.dumps({"caller": identity and identity.username}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


# Either wrap it in code ...
from flask_bindcar import BindcarMiddleware  # noqa: E402

application = BindcarMiddleware(app, exempt_paths=["/healthz"])
# ... or with no code at all:
#   gunicorn 'flask_bindcar.middleware:wrap("example_app.readme_wsgi:app")'

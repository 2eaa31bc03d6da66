import json

from flask_bindcar import BindcarMiddleware


def app(environ, start_response):
    identity = environ.get("bindcar.identity")  # set by BindcarMiddleware; None on exempt paths
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"caller": identity and identity.username}).encode()]


application = BindcarMiddleware(app, exempt_paths=["/healthz"])

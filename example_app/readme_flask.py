from flask import Flask, jsonify

from flask_bindcar import BindcarAuth, auth_exempt, auth_required, current_identity


def create_app():
    app = Flask(__name__)
    BindcarAuth(app)  # reads the BIND_* variables now; every view needs "Authorization: Bearer <token>"

    @app.get("/healthz")
    @auth_exempt
    def healthz():
        return jsonify(status="ok")

    @app.get("/api/v1/zones")
    def zones():  # any caller that passes the app-wide checks
        return jsonify(zones=[], caller=current_identity.username)

    @app.delete("/api/v1/zones/<name>")
    @auth_required(service_accounts=["system:serviceaccount:dns-system:external-dns"])
    def delete_zone(name):  # one ServiceAccount only: needs TokenReview mode, which knows the caller
        return jsonify(deleted=name)

    return app

from flask import Flask, jsonify

from flask_bindcar import BindcarAuth, auth_required, current_identity

app = Flask(__name__)
BindcarAuth(app)  # every view now needs "Authorization: Bearer <token>"; BIND_* variables configure it


@app.get("/api/v1/zones")
def zones():
    return jsonify(zones=[], caller=current_identity.username)


@app.delete("/api/v1/zones/<name>")
@auth_required(service_accounts=["system:serviceaccount:dns-system:external-dns"])
def delete_zone(name):
    return jsonify(deleted=name)

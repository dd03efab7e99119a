"""A Flask app on gunicorn (a WSGI server reading HTTP/1.1 as most do): what it makes of the
cookies a client sent, for the test that HTTP/2's cookie crumbs reach it whole (issue 22)."""

from __future__ import annotations

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/cookies")
def cookies():  # type: ignore[no-untyped-def]
    return jsonify(dict(request.cookies))


@app.get("/health")
def health():  # type: ignore[no-untyped-def]
    return jsonify({"ok": True})

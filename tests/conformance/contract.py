#!/usr/bin/env python3
"""sessiond's contract as a stranger sees it: third-party clients against a running server.

Nothing here shares code with sessiond. Access tokens are checked with joserfc (a JOSE library
sessiond does not use) against the published JWKS; sockets are driven by the `websockets`
package; HTTP by `requests`. Each check prints one line; the last line is "N passed, N failed",
and the exit status is 1 when anything failed.

    pip install websockets joserfc requests
    python3 tests/conformance/contract.py http://127.0.0.1:8080

The server must allow the origin it is reached at (by default: the issuer's origin) and accept
registrations. `cargo test` runs this through tests/conformance.rs.
"""
import json
import sys
import uuid

import requests
from joserfc import jwt
from joserfc.jwk import KeySet
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

SERVER = (sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080").rstrip("/")
SOCKET_URL = "ws" + SERVER[len("http"):] + "/v1/ws"
PASSWORD = "conformance password 1"
outcomes = []


def check(title):
    """Runs the decorated function at once and records whether it raised."""
    def run(fn):
        try:
            fn()
            outcomes.append((title, None))
        except Exception as e:  # noqa: BLE001 (every failure is reported, none stops the run)
            outcomes.append((title, f"{type(e).__name__}: {e}"))
        return fn
    return run


def post(path, body=None, token=None):
    headers = {"Authorization": "Bearer " + token} if token else {}
    return requests.post(SERVER + path, json=body, headers=headers, timeout=10)


def signed_in():
    """A new account and a fresh session of it: the TokenResponse."""
    email = f"conformance-{uuid.uuid4().hex[:12]}@example.com"
    r = post("/v1/auth/register", {"email": email, "password": PASSWORD})
    assert r.status_code == 201, (r.status_code, r.text)
    r = post("/v1/auth/login", {"email": email, "password": PASSWORD, "device_name": "conformance"})
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def authenticated_socket(access_token):
    ws = connect(SOCKET_URL, origin=SERVER, open_timeout=5, proxy=None, compression=None)
    ws.send(json.dumps({"type": "auth", "access_token": access_token}))
    ready = json.loads(ws.recv(timeout=5))
    assert ready["type"] == "ready", ready
    return ws


@check("the access token verifies against the JWKS with joserfc, typ at+jwt, sid/sub as issued")
def _():
    tokens = signed_in()
    jwks = requests.get(SERVER + "/.well-known/jwks.json", timeout=10)
    assert "max-age" in jwks.headers.get("cache-control", ""), jwks.headers
    decoded = jwt.decode(tokens["access_token"], KeySet.import_key_set(jwks.json()), algorithms=["EdDSA"])
    assert decoded.header["alg"] == "EdDSA" and decoded.header["typ"].lower() == "at+jwt", decoded.header
    assert decoded.claims["sub"] == tokens["user_id"], decoded.claims
    assert decoded.claims["sid"] == tokens["session_id"], decoded.claims


@check("a wrong password is problem+json 401 invalid_credentials")
def _():
    r = post("/v1/auth/login", {"email": "nobody-here@example.com", "password": "not the password"})
    assert r.status_code == 401, r.status_code
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    assert r.json()["code"] == "invalid_credentials", r.text


@check("a refresh rotates; retrying it at once converges on the same new token")
def _():
    tokens = signed_in()
    first = post("/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})
    again = post("/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})
    assert first.status_code == 200 and again.status_code == 200, (first.text, again.text)
    assert first.json()["refresh_token"] == again.json()["refresh_token"] != tokens["refresh_token"]
    assert first.headers.get("cache-control") == "no-store", first.headers


@check("after logout the unexpired access token is refused at once: 401 session_revoked")
def _():
    tokens = signed_in()
    assert post("/v1/auth/logout", token=tokens["access_token"]).status_code == 204
    r = requests.get(SERVER + "/v1/me", headers={"Authorization": "Bearer " + tokens["access_token"]}, timeout=10)
    assert r.status_code == 401 and r.json()["code"] == "session_revoked", r.text
    assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers


@check("an open socket gets the logout event, then close code 4001")
def _():
    tokens = signed_in()
    ws = authenticated_socket(tokens["access_token"])
    post("/v1/auth/logout", token=tokens["access_token"])
    event = json.loads(ws.recv(timeout=3))
    assert event["type"] == "logout" and event["reason"] == "logout", event
    assert event["session_id"] == tokens["session_id"], event
    try:
        ws.recv(timeout=3)
        raise AssertionError("the socket stayed open after the logout event")
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 4001, closed


@check("an upgrade from a foreign Origin is refused with 403")
def _():
    try:
        connect(SOCKET_URL, origin="https://attacker.example.net", open_timeout=5, proxy=None)
        raise AssertionError("the upgrade was accepted")
    except InvalidStatus as refused:
        assert refused.response.status_code == 403, refused.response.status_code


for title, error in outcomes:
    print(("pass  " if error is None else "FAIL  ") + title + ("" if error is None else "\n      " + error))
failures = sum(error is not None for _, error in outcomes)
print(f"{len(outcomes) - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)

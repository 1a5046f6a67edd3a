#!/usr/bin/env python3
"""An independent RFC 8935 push receiver for sessiond's SSF transmitter (docs/SSF.md).

Nothing here shares code with sessiond: every SET is verified with joserfc against the JWKS at
the `jwks_uri` of the transmitter's /.well-known/ssf-configuration, and checked against rule C0
of docs/SSF.md §6 (parsed by hand, so a library default cannot add or drop a rule):

- typ "secevent+jwt", alg "RS256", a kid found once in the SSF JWKS and not in the access-token
  JWKS (/.well-known/jwks.json), an RSA key of at least 2048 bits, a valid signature;
- iss = the issuer, aud = the stream's aud, iat <= now + 5 s, jti 32 lowercase hex digits and
  unique across the run;
- no sub, no exp; exactly one event; sub_id.format present.

It also checks the push itself (RFC 8935 §2.1): Content-Type application/secevent+jwt, and the
Authorization header when --authorization is given.

Each SET is answered 202 when it passes, else 400 {"err":"invalid_request","description":...}
(RFC 8935 §2.3; sessiond dead-letters on invalid_request, so a failing SET is not retried and
logged twice). A byte-identical resend of a SET already accepted (at-least-once delivery) is
answered 202 again and logged with "duplicate": true. One JSON line per POST is appended to OUT:

    {"ok": bool, "errors": [...], "duplicate": bool, "header": {...}, "claims": {...},
     "content_type": "...", "received_at": 1767225601.25}

The Authorization header is never logged. When the server is listening, its port is printed on
stdout (one line). Stop it with SIGTERM or SIGINT.

    pip install joserfc
    python3 tests/conformance/ssf_receiver.py --transmitter http://127.0.0.1:8080 \\
        --aud billing --out /tmp/sets.jsonl [--issuer http://127.0.0.1:8080] \\
        [--authorization 'Bearer rx-7f3a'] [--port 0]
    python3 tests/conformance/ssf_receiver.py --self-test

--self-test runs the receiver against a small fake transmitter scripted here (a JWKS, the
metadata, SETs signed with joserfc) and exits 0 when every check passed.
"""
import argparse
import base64
import binascii
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

SET_TYP = "secevent+jwt"
SET_ALG = "RS256"
MIN_RSA_BITS = 2048
IAT_SKEW = 5
JTI = re.compile(r"[0-9a-f]{32}")
MAX_BODY = 64 * 1024


def b64url_json(part):
    """A base64url (unpadded) JSON object; ValueError otherwise."""
    if "=" in part:
        raise ValueError("padded base64url")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not base64url ({e})") from None
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, expected an object")
    return value


def fetch_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (a test tool, http is expected)
        return json.loads(r.read())


class Transmitter:
    """The transmitter's metadata and SSF keys, fetched on first use and refetched for an
    unknown kid (a key rotation), and the access-token JWKS, fetched for every SET (a SET key
    must never be an access-token key, whenever either was published)."""

    def __init__(self, base, issuer, access_jwks_uri):
        self.base = base.rstrip("/")
        self.issuer = issuer
        self.access_jwks_uri = access_jwks_uri or self.base + "/.well-known/jwks.json"
        self.lock = threading.Lock()
        self.config = None
        self.jwks = None

    def load(self, refresh=False):
        with self.lock:
            if self.config is None:
                self.config = fetch_json(self.base + "/.well-known/ssf-configuration")
            if self.jwks is None or refresh:
                self.jwks = fetch_json(self.config["jwks_uri"])
            config, jwks = self.config, self.jwks
        return config, jwks, fetch_json(self.access_jwks_uri)


def keys_with_kid(jwks, kid):
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise ValueError("not a JWKS (no keys array)")
    return [k for k in keys if isinstance(k, dict) and k.get("kid") == kid]


def rsa_key_errors(jwk):
    errors = []
    if jwk.get("kty") != "RSA":
        errors.append(f"key kty is {jwk.get('kty')!r}, expected 'RSA'")
    if "alg" in jwk and jwk["alg"] != SET_ALG:
        errors.append(f"key alg is {jwk['alg']!r}, expected {SET_ALG!r}")
    if "use" in jwk and jwk["use"] != "sig":
        errors.append(f"key use is {jwk['use']!r}, expected 'sig'")
    n = jwk.get("n")
    if not isinstance(n, str):
        errors.append("key has no modulus n")
    else:
        bits = int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big").bit_length()
        if bits < MIN_RSA_BITS:
            errors.append(f"key modulus has {bits} bits, fewer than {MIN_RSA_BITS}")
    return errors


class Checker:
    """Rule C0 for every SET of one run (the jtis seen are the run's)."""

    def __init__(self, transmitter, aud):
        self.transmitter = transmitter
        self.aud = aud
        self.lock = threading.Lock()
        self.accepted = {}  # jti -> the SET's bytes

    def check(self, token):
        """(errors, header, claims, duplicate) for one compact SET."""
        header = claims = None
        parts = token.split(".")
        if len(parts) != 3:
            return [f"not a compact JWS: {len(parts)} parts, expected 3"], None, None, False
        try:
            header = b64url_json(parts[0])
        except ValueError as e:
            return [f"header: {e}"], None, None, False
        try:
            claims = b64url_json(parts[1])
        except ValueError as e:
            return [f"payload: {e}"], header, None, False
        with self.lock:
            if self.accepted.get(claims.get("jti")) == token:
                return [], header, claims, True
        errors = []
        if header.get("typ") != SET_TYP:
            errors.append(f"header typ is {header.get('typ')!r}, expected {SET_TYP!r}")
        if header.get("alg") != SET_ALG:
            errors.append(f"header alg is {header.get('alg')!r}, expected {SET_ALG!r}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            errors.append(f"header kid is {kid!r}, expected a non-empty string")
        else:
            errors += self.key_and_signature_errors(token, kid)
        errors += self.claim_errors(claims)
        if not errors:
            with self.lock:
                if claims["jti"] in self.accepted:
                    errors.append(f"jti {claims['jti']} was already used by another SET in this run")
                else:
                    self.accepted[claims["jti"]] = token
        return errors, header, claims, False

    def key_and_signature_errors(self, token, kid):
        try:
            config, jwks, access_jwks = self.transmitter.load()
            found = keys_with_kid(jwks, kid)
            if not found:
                config, jwks, access_jwks = self.transmitter.load(refresh=True)
                found = keys_with_kid(jwks, kid)
            in_access = keys_with_kid(access_jwks, kid)
        except (OSError, ValueError, KeyError, TypeError) as e:
            return [f"cannot load the transmitter's metadata or keys: {e}"]
        errors = []
        if self.transmitter.issuer is not None and config.get("issuer") != self.transmitter.issuer:
            errors.append(f"metadata issuer is {config.get('issuer')!r}, expected {self.transmitter.issuer!r}")
        if in_access:
            errors.append(f"kid {kid!r} is also in the access-token JWKS")
        if not found:
            return errors + [f"kid {kid!r} is not in the SSF JWKS"]
        if len(found) > 1:
            return errors + [f"kid {kid!r} appears more than once in the SSF JWKS"]
        key_errors = rsa_key_errors(found[0])
        if key_errors:
            return errors + key_errors
        try:
            key = RSAKey.import_key(found[0])
            # RS256 whatever the header says: the header's alg is never trusted for the choice.
            jws.deserialize_compact(token, key, algorithms=[SET_ALG])
        except JoseError as e:
            errors.append(f"the signature does not verify with key {kid!r} ({type(e).__name__})")
        except (ValueError, TypeError) as e:
            errors.append(f"key {kid!r} or the signature cannot be used ({type(e).__name__}: {e})")
        return errors

    def claim_errors(self, claims):
        errors = []
        issuer = self.transmitter.issuer
        if issuer is None:
            try:
                issuer = self.transmitter.load()[0].get("issuer")
            except (OSError, ValueError, KeyError) as e:
                return [f"cannot load the transmitter's metadata: {e}"]
        if claims.get("iss") != issuer:
            errors.append(f"iss is {claims.get('iss')!r}, expected {issuer!r}")
        aud = claims.get("aud")
        if not (aud == self.aud or aud == [self.aud]):
            errors.append(f"aud is {aud!r}, expected {self.aud!r}")
        iat = claims.get("iat")
        if not isinstance(iat, int) or isinstance(iat, bool):
            errors.append(f"iat is {iat!r}, expected an integer NumericDate")
        elif iat > time.time() + IAT_SKEW:
            errors.append(f"iat {iat} is more than {IAT_SKEW} s in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not JTI.fullmatch(jti):
            errors.append(f"jti is {jti!r}, expected 32 lowercase hex digits")
        if "sub" in claims:
            errors.append("the SET has a sub claim")
        if "exp" in claims:
            errors.append("the SET has an exp claim")
        events = claims.get("events")
        if not isinstance(events, dict):
            errors.append(f"events is {events!r}, expected an object")
        elif len(events) != 1:
            errors.append(f"events has {len(events)} members, expected exactly one")
        elif not isinstance(next(iter(events.values())), dict):
            errors.append("the event's payload is not an object")
        sub_id = claims.get("sub_id")
        if not isinstance(sub_id, dict) or not isinstance(sub_id.get("format"), str) or not sub_id["format"]:
            errors.append(f"sub_id is {sub_id!r}, expected an object with a format")
        return errors


def make_handler(checker, out_path, authorization, out_lock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: the JSON lines are the record
            pass

        def answer(self, status, body=None):
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.answer(413)
                return
            token = self.rfile.read(length).decode("utf-8", "replace").strip()
            content_type = self.headers.get("Content-Type")
            errors, header, claims, duplicate = checker.check(token)
            media_type = (content_type or "").split(";")[0].strip().lower()
            if media_type != "application/secevent+jwt":
                errors.append(f"Content-Type is {content_type!r}, expected 'application/secevent+jwt'")
            if authorization is not None and self.headers.get("Authorization") != authorization:
                errors.append("the Authorization header is not the configured one")
            line = {"ok": not errors, "errors": errors, "duplicate": duplicate, "header": header,
                    "claims": claims, "content_type": content_type, "received_at": time.time()}
            with out_lock, open(out_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            if errors:
                self.answer(400, {"err": "invalid_request", "description": "; ".join(errors)[:500]})
            else:
                self.answer(202)

    return Handler


def serve(args):
    transmitter = Transmitter(args.transmitter, args.issuer, args.access_jwks_uri)
    checker = Checker(transmitter, args.aud)
    handler = make_handler(checker, args.out, args.authorization, threading.Lock())
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ---------------------------------------------------------------------------------------------
# --self-test: a fake transmitter scripted here, the receiver in a subprocess.


def self_test():
    warnings.filterwarnings("ignore", "Key size should be >= 2048 bits")  # the small key is on purpose
    key = RSAKey.generate_key(2048, parameters={"kid": "ssf-1", "use": "sig", "alg": "RS256"})
    other_key = RSAKey.generate_key(2048, parameters={"kid": "ssf-1"})
    small_key = RSAKey.generate_key(1024, parameters={"kid": "small"})
    public = key.as_dict(private=False)
    state = {"jwks": {"keys": [public, small_key.as_dict(private=False)]},
             "access": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "access-1",
                                  "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}

    class Fake(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            docs = {"/.well-known/ssf-configuration": {"spec_version": "1_0", "issuer": base,
                                                       "jwks_uri": base + "/ssf/jwks.json"},
                    "/ssf/jwks.json": state["jwks"], "/.well-known/jwks.json": state["access"]}
            body = json.dumps(docs.get(self.path, {})).encode()
            self.send_response(200 if self.path in docs else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    fake = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    issuer = f"http://127.0.0.1:{fake.server_address[1]}"
    out = tempfile.NamedTemporaryFile(prefix="ssf-receiver-", suffix=".jsonl", delete=False).name
    receiver = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--transmitter", issuer, "--issuer", issuer,
         "--aud", "billing", "--out", out, "--authorization", "Bearer rx-7f3a"],
        stdout=subprocess.PIPE, text=True)
    results = []
    try:
        port = int(receiver.stdout.readline())
        url = f"http://127.0.0.1:{port}/events"

        def claims(**changes):
            c = {"iss": issuer, "aud": "billing", "iat": int(time.time()), "jti": os.urandom(16).hex(),
                 "txn": "tx_1", "sub_id": {"format": "iss_sub", "iss": issuer, "sub": "u_1"},
                 "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked":
                            {"initiating_entity": "user", "reason_admin": {"en": "logout"}}}}
            for name, value in changes.items():
                if value is None:
                    c.pop(name, None)
                else:
                    c[name] = value
            return c

        def sign(c, signing_key=key, **header):
            h = {"typ": SET_TYP, "alg": SET_ALG, "kid": "ssf-1", **header}
            h = {k: v for k, v in h.items() if v is not None}
            return jws.serialize_compact(h, json.dumps(c), signing_key, algorithms=[h["alg"]])

        def push(token, content_type="application/secevent+jwt", auth="Bearer rx-7f3a"):
            headers = {"Content-Type": content_type, "Accept": "application/json"}
            if auth is not None:
                headers["Authorization"] = auth
            req = urllib.request.Request(url, data=token.encode(), headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    status, body = r.status, r.read()
            except urllib.error.HTTPError as e:
                status, body = e.code, e.read()
            with open(out, encoding="utf-8") as f:
                return status, body, json.loads(f.readlines()[-1])

        def expect(title, token, error=None, **push_args):
            status, body, line = push(token, **push_args)
            if error is None:
                good = status == 202 and line["ok"] and not line["errors"]
            else:
                good = (status == 400 and json.loads(body)["err"] == "invalid_request" and not line["ok"]
                        and any(error in e for e in line["errors"]))
            results.append((title, good, f"{status} {body[:200]!r} {line['errors']}"))
            return line

        valid = sign(claims())
        line = expect("a valid SET is accepted", valid)
        results.append(("its claims are logged", line["claims"]["aud"] == "billing" and not line["duplicate"], line))
        line = expect("a byte-identical resend is accepted as a duplicate", valid)
        results.append(("the resend is marked duplicate", line["duplicate"], line))
        expect("aud as a one-element array", sign(claims(aud=["billing"])))
        expect("typ JWT", sign(claims(), typ="JWT"), "header typ")
        expect("no typ", sign(claims(), typ=None), "header typ")
        from joserfc.jwk import OctKey
        expect("alg HS256", sign(claims(), OctKey.generate_key(256), alg="HS256"), "header alg")
        expect("unknown kid", sign(claims(), kid="nope"), "not in the SSF JWKS")
        expect("a key under 2048 bits", sign(claims(), small_key, kid="small"), "fewer than 2048")
        expect("another key's signature", sign(claims(), other_key), "does not verify")
        head, _, sig = valid.split(".")
        forged = ".".join([head, base64.urlsafe_b64encode(json.dumps(claims()).encode()).decode().rstrip("="), sig])
        expect("claims changed after signing", forged, "does not verify")
        expect("wrong iss", sign(claims(iss="https://evil")), "iss is")
        expect("wrong aud", sign(claims(aud="other")), "aud is")
        expect("iat in the future", sign(claims(iat=int(time.time()) + 60)), "in the future")
        expect("jti not 32 hex", sign(claims(jti="X" * 32)), "jti is")
        reused = claims(txn="tx_other")
        reused["jti"] = json.loads(base64.urlsafe_b64decode(valid.split(".")[1] + "=="))["jti"]
        expect("a jti reused by another SET", sign(reused), "already used")
        expect("sub present", sign(claims(sub="u_1")), "sub claim")
        expect("exp present", sign(claims(exp=int(time.time()) + 600)), "exp claim")
        two = {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {},
               "https://schemas.openid.net/secevent/risc/event-type/account-disabled": {}}
        expect("two events", sign(claims(events=two)), "2 members")
        expect("no sub_id.format", sign(claims(sub_id={"id": "x"})), "sub_id is")
        expect("not a JWS", "not-a-jwt", "not a compact JWS")
        expect("wrong Content-Type", sign(claims()), "Content-Type", content_type="application/jwt")
        expect("no Authorization", sign(claims()), "Authorization", auth=None)
        # A key rotation: a new kid is fetched when first seen.
        rotated = RSAKey.generate_key(2048, parameters={"kid": "ssf-2"})
        state["jwks"] = {"keys": [public, rotated.as_dict(private=False)]}
        expect("a rotated key is fetched", sign(claims(), rotated, kid="ssf-2"))
        # A kid that is also an access-token key.
        state["access"] = {"keys": [public]}
        expect("a kid shared with the access-token JWKS", sign(claims()), "access-token JWKS")
    finally:
        receiver.send_signal(signal.SIGTERM)
        try:
            receiver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            receiver.kill()
        fake.shutdown()
        os.unlink(out)
    failed = [r for r in results if not r[1]]
    for title, good, detail in results:
        print(("ok   " if good else "FAIL ") + title + ("" if good else f": {detail}"))
    print(f"self-test: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or receiver.returncode not in (0, -signal.SIGTERM) else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--transmitter", help="the transmitter's base URL (its /.well-known/ssf-configuration)")
    p.add_argument("--aud", help="the stream's aud")
    p.add_argument("--out", help="the file to append one JSON line per POST to")
    p.add_argument("--issuer", help="the expected iss (default: the metadata's issuer)")
    p.add_argument("--access-jwks-uri", help="the access-token JWKS (default: BASE/.well-known/jwks.json)")
    p.add_argument("--authorization", help="the Authorization header every push must carry")
    p.add_argument("--port", type=int, default=0, help="the port to listen on (default: any free one)")
    p.add_argument("--self-test", action="store_true", help="run against a fake transmitter and exit")
    args = p.parse_args()
    if args.self_test:
        sys.exit(self_test())
    if not (args.transmitter and args.aud and args.out):
        p.error("--transmitter, --aud and --out are required")
    serve(args)


if __name__ == "__main__":
    main()

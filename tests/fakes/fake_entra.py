#!/usr/bin/env python3
"""A strict fake of the Entra ID v2 token endpoint and of a generic OAuth2 one, over TLS.

For integration tests only: binds 127.0.0.1 and serves HTTPS with the test CA's
server certificate (tests/integration/testca.py).  Token endpoints:

    POST /{tenant}/oauth2/v2.0/token    Entra ID client credentials
                                        (reference/azure-managed-identity.md section 5)
    POST /token                         RFC 6749 client credentials (the oauth2 source)

Both check every form parameter strictly: an unknown, duplicate or missing one
is a 400 with an Entra-style error body (error, error_description,
error_codes, timestamp, trace_id, correlation_id, error_uri).  Client secrets
are compared, client assertions verified: signature against the registered
certificate (RS256, PS256 with a digest-length salt, ES256 as raw r||s),
header (alg, typ, x5t#S256 / x5t, kid, x5c) and claims (aud = this token
endpoint, iss = sub = client_id, jti never seen before, nbf/exp window of at
most 10 minutes).  Federated assertions must equal the registered content.

With --client-ca the server asks for a TLS client certificate (optional at
the TLS level; "require_client_cert" makes the token endpoints insist on one).

Control API on the same port (tests talk to it over TLS without verifying):

    POST /_fake/config  {"tenant": "test-tenant", "clients": {CLIENT_ID: CLIENT},
                         "lifetime": 3600, "status": 200, "error": null,
                         "error_code": null, "error_body": null, "retry_after": null,
                         "delay": 0, "require_client_cert": false,
                         "extra_params": {}}
        CLIENT = {"secret": str|null, "certificate": PEM|null, "alg": str|null,
                  "require_x5c": false, "kid": str|null, "federated": str|null,
                  "auth_method": str|null}
        replaces the behaviour (omitted keys take these defaults).  "status"
        other than 200 answers every valid token request with that status and an
        Entra-style error ("error"/"error_code" pick its name and AADSTS code),
        or with "error_body" verbatim.
    GET  /_fake/stats   {"requests", "by_path", "by_status", "times", "last_form",
                         "last_auth", "last_assertion", "last_headers",
                         "last_client_cert", "last_error", "jtis", "issued",
                         "federated_matches", "assertion_signatures", "tls_failures"}
        Secrets are redacted from last_form and last_headers; last_assertion is
        the decoded header and claims, without the signature.  assertion_signatures
        (the last segment of every assertion seen) lets a test check that no log
        holds an assertion; a test may read it but must never print it.
    POST /_fake/reset   resets counters, issued tokens, seen jtis and config

Usage: fake_entra.py --cert PEM --key PEM [--client-ca PEM] [--port 0]
                     [--port-file PATH] [--quiet]
The chosen port is written to PATH once the socket listens.  Needs
python3-cryptography.  Secrets, assertions and tokens never appear in its log.
"""

import argparse
import base64
import binascii
import hashlib
import json
import os
import secrets
import ssl
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ENTRA_SUFFIX = "/oauth2/v2.0/token"
GENERIC_PATH = "/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_BODY = 1 << 20
MAX_ASSERTION_WINDOW = 600  # exp - nbf, and exp - iat
CLOCK_SKEW = 300  # what Entra tolerates on nbf
REDACTED = "<redacted>"

DEFAULT_CONFIG = {
    "tenant": "test-tenant",
    "clients": {},
    "lifetime": 3600,
    "status": 200,
    "error": None,
    "error_code": None,
    "error_body": None,
    "retry_after": None,
    "delay": 0,
    "require_client_cert": False,
    "extra_params": {},
}

CONFIG_TYPES = {
    "tenant": (str,),
    "clients": (dict,),
    "lifetime": (int,),
    "status": (int,),
    "error": (str, type(None)),
    "error_code": (int, type(None)),
    "error_body": (str, type(None)),
    "retry_after": (int, type(None)),
    "delay": (int, float),
    "require_client_cert": (bool,),
    "extra_params": (dict,),
}

CLIENT_TYPES = {
    "secret": (str, type(None)),
    "certificate": (str, type(None)),
    "alg": (str, type(None)),
    "require_x5c": (bool,),
    "kid": (str, type(None)),
    "federated": (str, type(None)),
    "auth_method": (str, type(None)),
}

# what a scripted failure status answers by default: (error, AADSTS code)
STATUS_ERRORS = {
    400: ("invalid_request", 900144),
    401: ("invalid_client", 7000215),
    403: ("unauthorized_client", 700016),
    429: ("temporarily_unavailable", 90055),
    500: ("server_error", 90024),
    502: ("temporarily_unavailable", 90006),
    503: ("temporarily_unavailable", 90006),
    504: ("temporarily_unavailable", 90090),
}

QUIET = False


def log(msg):
    if not QUIET:
        sys.stderr.write("fake_entra: %s\n" % msg)
        sys.stderr.flush()


class Reject(Exception):
    """A token request refused: status, OAuth2 error name, AADSTS code, description."""

    def __init__(self, status, error, code, description):
        super().__init__(description)
        self.status = status
        self.error = error
        self.code = code
        self.description = description


def b64url_decode(s):
    if not isinstance(s, str) or any(c in s for c in "=+/ \n"):
        raise ValueError("not base64url without padding")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Client:
    """A registered application, from the control API."""

    def __init__(self, client_id, doc):
        if not isinstance(doc, dict):
            raise ValueError("client %r must be an object" % client_id)
        for key, value in doc.items():
            if key not in CLIENT_TYPES:
                raise ValueError("unknown client key %r" % key)
            if isinstance(value, bool) and bool not in CLIENT_TYPES[key]:
                raise ValueError("client key %s has the wrong type" % key)
            if not isinstance(value, CLIENT_TYPES[key]):
                raise ValueError("client key %s has the wrong type" % key)
        self.client_id = client_id
        self.secret = doc.get("secret")
        self.alg = doc.get("alg")
        self.require_x5c = doc.get("require_x5c", False)
        self.kid = doc.get("kid")
        self.federated = doc.get("federated")
        self.auth_method = doc.get("auth_method")
        self.cert = None
        if doc.get("certificate"):
            self.cert = x509.load_pem_x509_certificate(doc["certificate"].encode())
            der = self.cert.public_bytes(serialization.Encoding.DER)
            self.der = der
            self.x5t_s256 = b64url(hashlib.sha256(der).digest())
            self.x5t = b64url(hashlib.sha1(der).digest())


class State:
    """Everything the handlers share, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tls_failures = 0
        self.reset()

    def reset(self):
        self.config = dict(DEFAULT_CONFIG)
        self.clients = {}
        self.requests = 0
        self.by_path = {}
        self.by_status = {}
        self.times = []
        self.last_form = {}
        self.last_auth = None
        self.last_assertion = None
        self.last_headers = {}
        self.last_client_cert = None
        self.last_error = None
        self.jtis = []
        self.seen_jtis = set()
        self.issued = []
        self.federated_matches = []
        self.assertion_signatures = []
        self.serial = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def stats(self):
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "by_path": dict(self.by_path),
            "by_status": dict(self.by_status),
            "times": list(self.times),
            "last_form": dict(self.last_form),
            "last_auth": self.last_auth,
            "last_assertion": self.last_assertion,
            "last_headers": dict(self.last_headers),
            "last_client_cert": self.last_client_cert,
            "last_error": self.last_error,
            "jtis": list(self.jtis),
            "issued": list(self.issued),
            "federated_matches": list(self.federated_matches),
            "assertion_signatures": list(self.assertion_signatures),
            "tls_failures": self.tls_failures,
        }


STATE = State()


def validate_config(doc):
    if not isinstance(doc, dict):
        raise ValueError("config must be a JSON object")
    cfg = dict(DEFAULT_CONFIG)
    for key, value in doc.items():
        if key not in CONFIG_TYPES:
            raise ValueError("unknown config key %r" % key)
        types = CONFIG_TYPES[key]
        if isinstance(value, bool) and bool not in types:
            raise ValueError("%s has the wrong type" % key)
        if not isinstance(value, types):
            raise ValueError("%s has the wrong type" % key)
        cfg[key] = value
    if not 100 <= cfg["status"] <= 599:
        raise ValueError("status out of range")
    if cfg["delay"] < 0 or cfg["delay"] > 600:
        raise ValueError("delay out of range")
    if cfg["retry_after"] is not None and cfg["retry_after"] < 0:
        raise ValueError("retry_after must be >= 0")
    clients = {cid: Client(cid, c) for cid, c in cfg["clients"].items()}
    for name, value in cfg["extra_params"].items():
        if not isinstance(value, str):
            raise ValueError("extra_params[%s] must be a string" % name)
    return cfg, clients


def entra_error_body(error, code, description):
    """The body Entra ID sends with a 4xx/5xx from its token endpoint."""
    trace_id = str(uuid.uuid4())
    correlation_id = str(uuid.uuid4())
    ts = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    # Entra separates these with CRLF: a client must not let them into a log line raw
    text = "AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s" % (
        code, description, trace_id, correlation_id, ts)
    return {
        "error": error,
        "error_description": text,
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": "https://login.microsoftonline.com/error?code=%d" % code,
    }


def bad_request(description, code=900144):
    return Reject(400, "invalid_request", code, description)


def invalid_client(description, code):
    return Reject(401, "invalid_client", code, description)


# -- client assertions -----------------------------------------------------


def verify_signature(cert, alg, signing_input, sig):
    key = cert.public_key()
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256" and isinstance(key, rsa.RSAPublicKey):
            # RFC 7518 3.5: the salt is as long as the hash, as Entra verifies it
            key.verify(sig, signing_input,
                       padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                       hashes.SHA256())
        elif alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(sig) != 64:
                raise InvalidSignature()
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                       int.from_bytes(sig[32:], "big"))
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        else:
            raise invalid_client("Key type does not match alg '%s'." % alg, 700027)
    except InvalidSignature:
        raise invalid_client("Client assertion failed signature validation.", 700027)


def check_assertion_header(client, header):
    allowed = {"alg", "typ", "x5t", "x5t#S256", "x5c", "kid"}
    unknown = set(header) - allowed
    if unknown:
        raise bad_request("Unexpected assertion header fields %s." % sorted(unknown), 50027)
    alg = header.get("alg")
    if alg not in ("RS256", "PS256", "ES256"):
        raise bad_request("Unsupported assertion alg.", 50027)
    if client.alg is not None and alg != client.alg:
        raise invalid_client("Assertion alg %s, expected %s." % (alg, client.alg), 700027)
    if header.get("typ") != "JWT":
        raise bad_request("Assertion typ must be JWT.", 50027)
    # every thumbprint sent must be the registered certificate's; at least one of them,
    # or the registered kid, must say which key signed
    if "x5t" in header and header["x5t"] != client.x5t:
        raise invalid_client("x5t does not match the registered certificate.", 700027)
    if "x5t#S256" in header and header["x5t#S256"] != client.x5t_s256:
        raise invalid_client("x5t#S256 does not match the registered certificate.", 700027)
    if "x5t" not in header and "x5t#S256" not in header and client.kid is None:
        raise invalid_client("Assertion has neither x5t, x5t#S256 nor kid.", 700027)
    if client.kid is not None and header.get("kid") != client.kid:
        raise invalid_client("kid does not match the registered key.", 700027)
    if "x5c" in header:
        x5c = header["x5c"]
        if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
            raise bad_request("x5c must be a non-empty array of strings.", 50027)
        try:
            leaf = base64.b64decode(x5c[0], validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("x5c is not standard base64.", 50027)
        if leaf != client.der:
            raise invalid_client("x5c does not hold the registered certificate.", 700027)
    elif client.require_x5c:
        raise invalid_client("Subject name/issuer authentication needs x5c.", 700027)


def check_assertion_claims(client, claims, audience):
    allowed = {"aud", "iss", "sub", "jti", "nbf", "exp", "iat"}
    unknown = set(claims) - allowed
    if unknown:
        raise bad_request("Unexpected assertion claims %s." % sorted(unknown), 50027)
    if claims.get("aud") != audience:
        raise invalid_client("Assertion audience must be the token endpoint %s." % audience,
                             700212)
    if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
        raise invalid_client("Assertion iss and sub must be the client_id.", 700021)
    now = int(time.time())
    for name in ("nbf", "exp"):
        if not isinstance(claims.get(name), int) or isinstance(claims.get(name), bool):
            raise bad_request("Assertion claim %s must be an integer." % name, 50027)
    if "iat" in claims and (not isinstance(claims["iat"], int) or isinstance(claims["iat"], bool)):
        raise bad_request("Assertion claim iat must be an integer.", 50027)
    nbf, exp = claims["nbf"], claims["exp"]
    if exp <= now or nbf > now + CLOCK_SKEW:
        raise invalid_client("Client assertion is not within its valid time range.", 700024)
    if exp - nbf > MAX_ASSERTION_WINDOW or exp - claims.get("iat", nbf) > MAX_ASSERTION_WINDOW:
        raise invalid_client("Client assertion lifetime exceeds 10 minutes.", 700024)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise bad_request("Assertion claim jti is missing.", 50027)
    with STATE.lock:
        if jti in STATE.seen_jtis:
            raise invalid_client("The assertion jti was already used (replay).", 7000216)
        STATE.seen_jtis.add(jti)
        STATE.jtis.append(jti)


def verify_assertion(client, assertion, audience):
    """Checks a signed client assertion for client; records its header and claims."""
    if client.cert is None:
        raise invalid_client("No certificate registered for this application.", 700027)
    parts = assertion.split(".")
    if len(parts) != 3:
        raise bad_request("Client assertion is not a JWS compact serialization.", 50027)
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        sig = b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError):
        raise bad_request("Client assertion is not valid base64url JSON.", 50027)
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise bad_request("Client assertion header and claims must be objects.", 50027)
    with STATE.lock:
        STATE.last_assertion = {"header": header, "claims": claims}
        STATE.assertion_signatures.append(parts[2])
    check_assertion_header(client, header)
    verify_signature(client.cert, header["alg"], (parts[0] + "." + parts[1]).encode(), sig)
    check_assertion_claims(client, claims, audience)


# -- the token endpoints ---------------------------------------------------


def parse_form(handler, body):
    ctype = handler.headers.get("Content-Type", "")
    if ctype.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise bad_request("Content-Type must be application/x-www-form-urlencoded.")
    try:
        text = body.decode("ascii")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except (UnicodeDecodeError, ValueError):
        raise bad_request("The request body is not a valid form.")
    form = {}
    for k, v in pairs:
        if k in form:
            raise bad_request("Duplicate parameter '%s'." % k, 90015)
        form[k] = v
    return form


def redact(form):
    out = dict(form)
    for k in ("client_secret", "client_assertion"):
        if k in out:
            out[k] = REDACTED
    return out


def basic_credentials(handler):
    """(client_id, secret) from Authorization: Basic, form-decoded per RFC 6749 2.3.1."""
    auth = handler.headers.get("Authorization")
    if auth is None:
        return None
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "basic":
        raise bad_request("Unsupported Authorization scheme.")
    try:
        raw = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise bad_request("Authorization: Basic is not valid base64.")
    user, sep, password = raw.partition(":")
    if not sep:
        raise bad_request("Authorization: Basic lacks ':'.")
    return unquote_plus(user), unquote_plus(password)


def find_client(clients, client_id):
    client = clients.get(client_id)
    if client is None:
        raise Reject(400, "unauthorized_client", 700016,
                     "Application with identifier '%s' was not found in the directory." %
                     client_id)
    return client


def check_secret(client, secret):
    if client.secret is None:
        raise invalid_client("No client secret registered for this application.", 7000215)
    if not secrets.compare_digest(client.secret.encode(), secret.encode()):
        raise invalid_client("Invalid client secret provided.", 7000215)


def check_federated(client, assertion):
    match = client.federated is not None and secrets.compare_digest(
        client.federated.encode(), assertion.encode())
    with STATE.lock:
        STATE.federated_matches.append(match)
    if not match:
        raise invalid_client("Client assertion is not within its valid time range.", 700024)


def authenticate_entra(form, clients, audience, basic):
    client = find_client(clients, form["client_id"])
    has_secret = "client_secret" in form
    has_assertion = "client_assertion" in form or "client_assertion_type" in form
    if basic is not None:
        raise bad_request("Send the client credentials in the body, not in Authorization.")
    if has_secret == has_assertion:
        raise bad_request("Exactly one of client_secret and client_assertion is required.",
                          7000218)
    if has_secret:
        check_secret(client, form["client_secret"])
        return "client_secret_post"
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise bad_request("client_assertion_type must be %s." % ASSERTION_TYPE, 50027)
    if not form.get("client_assertion"):
        raise bad_request("client_assertion is missing.", 50027)
    if client.federated is not None:
        check_federated(client, form["client_assertion"])
        return "federated"
    verify_assertion(client, form["client_assertion"], audience)
    return "private_key_jwt"


def entra_token(form, cfg, clients, tenant, audience, basic):
    allowed = {"grant_type", "client_id", "scope", "client_secret", "client_assertion_type",
               "client_assertion"}
    unknown = set(form) - allowed
    if unknown:
        raise bad_request("Unexpected parameters %s." % sorted(unknown), 900144)
    if tenant != cfg["tenant"]:
        raise Reject(400, "invalid_request", 90002, "Tenant '%s' not found." % tenant)
    for name in ("grant_type", "client_id", "scope"):
        if not form.get(name):
            raise bad_request("The request body must contain the following parameter: '%s'." %
                              name)
    if form["grant_type"] != "client_credentials":
        raise Reject(400, "unsupported_grant_type", 70003,
                     "The app requested an unsupported grant type.")
    scope = form["scope"]
    if " " in scope or not scope.endswith("/.default") or scope == "/.default":
        raise Reject(400, "invalid_scope", 1002012,
                     "The provided value for scope %s is not valid. Client credential flows "
                     "must have a scope value with /.default suffixed to the resource "
                     "identifier (application ID URI)." % scope)
    return authenticate_entra(form, clients, audience, basic)


def authenticate_generic(form, clients, audience, basic):
    has_secret = "client_secret" in form
    has_assertion = "client_assertion" in form or "client_assertion_type" in form
    if sum((basic is not None, has_secret, has_assertion)) != 1:
        raise bad_request("Exactly one client authentication method is required.")
    if basic is not None:
        client_id, secret = basic
        if "client_id" in form and form["client_id"] != client_id:
            raise bad_request("client_id differs from the Basic credentials.")
        client = find_client(clients, client_id)
        method = "client_secret_basic"
        check_secret(client, secret)
    elif has_secret:
        if not form.get("client_id"):
            raise bad_request("client_secret_post needs client_id.")
        client = find_client(clients, form["client_id"])
        method = "client_secret_post"
        check_secret(client, form["client_secret"])
    else:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise bad_request("client_assertion_type must be %s." % ASSERTION_TYPE)
        if not form.get("client_assertion"):
            raise bad_request("client_assertion is missing.")
        # RFC 7523: the client is the assertion's sub; client_id is optional
        try:
            claims = json.loads(b64url_decode(form["client_assertion"].split(".")[1]))
            client_id = claims["sub"]
        except (ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError):
            raise bad_request("client_assertion has no readable sub.")
        if "client_id" in form and form["client_id"] != client_id:
            raise bad_request("client_id differs from the assertion's sub.")
        client = find_client(clients, str(client_id))
        method = "private_key_jwt"
        verify_assertion(client, form["client_assertion"], audience)
    if client.auth_method is not None and client.auth_method != method:
        raise invalid_client("This client must authenticate with %s, not %s." %
                             (client.auth_method, method), 7000215)
    return method


def generic_token(form, cfg, clients, audience, basic):
    extra = cfg["extra_params"]
    allowed = {"grant_type", "client_id", "scope", "resource", "audience", "client_secret",
               "client_assertion_type", "client_assertion"} | set(extra)
    unknown = set(form) - allowed
    if unknown:
        raise bad_request("Unexpected parameters %s." % sorted(unknown))
    if form.get("grant_type") != "client_credentials":
        raise Reject(400, "unsupported_grant_type", 70003, "grant_type must be client_credentials.")
    for name, value in extra.items():
        if form.get(name) != value:
            raise bad_request("Parameter '%s' is missing or has the wrong value." % name)
    for name in ("scope", "resource", "audience"):
        if name in form and not form[name]:
            raise bad_request("Parameter '%s' is empty." % name)
    return authenticate_generic(form, clients, audience, basic)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-entra"
    sys_version = ""

    def log_message(self, fmt, *args):
        pass  # replaced by log_request: no bodies, no secrets

    def log_request(self, code="-", size="-"):
        log("%s %s -> %s" % (self.command, urlsplit(self.path).path, code))

    def send(self, status, body, extra=None):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store, no-cache")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass

    def send_json(self, status, doc, extra=None):
        self.send(status, json.dumps(doc), extra)

    def read_body(self):
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding"):
                raise ValueError("chunked bodies are not accepted")
            return b""
        n = int(length)
        if n < 0 or n > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n)

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/_fake/stats":
            with STATE.lock:
                doc = STATE.stats()
            self.send_json(200, doc)
        elif path == GENERIC_PATH or path.endswith(ENTRA_SUFFIX):
            self.send_json(405, entra_error_body("invalid_request", 900561,
                                                 "The endpoint only accepts POST requests."))
        else:
            self.send_json(404, {"error": "not_found"})

    def do_POST(self):
        path = urlsplit(self.path).path
        try:
            body = self.read_body()
        except ValueError as e:
            self.close_connection = True
            self.send_json(400, {"error": str(e)})
            return
        if path == "/_fake/config":
            try:
                cfg, clients = validate_config(json.loads(body.decode("utf-8") or "null"))
            except (ValueError, UnicodeDecodeError) as e:
                self.send_json(400, {"error": str(e)})
                return
            with STATE.lock:
                STATE.config = cfg
                STATE.clients = clients
            self.send_json(200, {"ok": True})
        elif path == "/_fake/reset":
            with STATE.lock:
                tls_failures = STATE.tls_failures
                STATE.reset()
                STATE.tls_failures = tls_failures
            self.send_json(200, {"ok": True})
        elif path == GENERIC_PATH or (path.endswith(ENTRA_SUFFIX) and path.count("/") == 4):
            self.token(path, body)
        else:
            self.send_json(404, {"error": "not_found"})

    def client_cert_cn(self):
        try:
            cert = self.connection.getpeercert()
        except (AttributeError, ValueError):
            return None
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    return v
        return ""

    def token(self, path, body):
        with STATE.lock:
            STATE.in_flight += 1
            STATE.max_in_flight = max(STATE.max_in_flight, STATE.in_flight)
        try:
            self.token_counted(path, body)
        finally:
            with STATE.lock:
                STATE.in_flight -= 1

    def token_counted(self, path, body):
        cn = self.client_cert_cn()
        with STATE.lock:
            STATE.requests += 1
            STATE.by_path[path] = STATE.by_path.get(path, 0) + 1
            STATE.times.append(time.time())
            STATE.last_client_cert = cn
            STATE.last_headers = {k: (REDACTED if k.lower() == "authorization" else v)
                                  for k, v in self.headers.items()}
            cfg = dict(STATE.config)
            clients = dict(STATE.clients)
        if cfg["delay"]:
            time.sleep(cfg["delay"])
        extra = {}
        if cfg["retry_after"] is not None:
            extra["Retry-After"] = str(cfg["retry_after"])
        host = self.headers.get("Host", "")
        audience = "https://%s%s" % (host, path)
        try:
            form = parse_form(self, body)
            with STATE.lock:
                STATE.last_form = redact(form)
            basic = basic_credentials(self)
            if cfg["require_client_cert"] and not cn:
                raise invalid_client("A TLS client certificate is required.", 50012)
            if path == GENERIC_PATH:
                method = generic_token(form, cfg, clients, audience, basic)
            else:
                method = entra_token(form, cfg, clients, path.split("/")[1], audience, basic)
            with STATE.lock:
                STATE.last_auth = method
            if cfg["status"] != 200:
                self.scripted_failure(cfg, extra)
                return
        except Reject as r:
            self.reject(r, extra)
            return
        self.issue(path, cfg, extra)

    def scripted_failure(self, cfg, extra):
        status = cfg["status"]
        if cfg["error_body"] is not None:
            with STATE.lock:
                STATE.last_error = {"status": status, "error": None}
                STATE.by_status[str(status)] = STATE.by_status.get(str(status), 0) + 1
            self.send(status, cfg["error_body"], extra)
            return
        error, code = STATUS_ERRORS.get(status, ("server_error", 90024))
        error = cfg["error"] or error
        code = cfg["error_code"] or code
        self.reject(Reject(status, error, code, "fake_entra scripted error %d." % status), extra)

    def reject(self, r, extra):
        doc = entra_error_body(r.error, r.code, r.description)
        with STATE.lock:
            STATE.last_error = {"status": r.status, "error": r.error, "error_codes": [r.code],
                                "description": r.description, "trace_id": doc["trace_id"],
                                "correlation_id": doc["correlation_id"]}
            STATE.by_status[str(r.status)] = STATE.by_status.get(str(r.status), 0) + 1
        log("token request refused: %d %s AADSTS%d %s" % (r.status, r.error, r.code,
                                                           r.description))
        self.send_json(r.status, doc, extra)

    def issue(self, path, cfg, extra):
        with STATE.lock:
            STATE.serial += 1
            token = "fake-entra.%d.%s" % (STATE.serial, secrets.token_hex(16))
            STATE.issued.append(token)
            STATE.by_status["200"] = STATE.by_status.get("200", 0) + 1
            STATE.last_error = None
        doc = {"token_type": "Bearer", "expires_in": cfg["lifetime"]}
        if path != GENERIC_PATH:
            doc["ext_expires_in"] = cfg["lifetime"]
        doc["access_token"] = token
        self.send_json(200, doc, extra)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ssl_context = None

    def finish_request(self, request, client_address):
        # the TLS handshake happens here, in the request's thread, so a client that
        # refuses our certificate or stalls cannot block the accept loop
        try:
            request.settimeout(30)
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with STATE.lock:
                STATE.tls_failures += 1
            log("TLS handshake failed: %s" % getattr(e, "reason", e))
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
            return
        log("error handling a request: %r" % (exc,))


def main():
    global QUIET
    ap = argparse.ArgumentParser(description="fake Entra ID / OAuth2 token endpoint over TLS")
    ap.add_argument("--cert", required=True, help="server certificate (PEM)")
    ap.add_argument("--key", required=True, help="server private key (PEM)")
    ap.add_argument("--client-ca", help="ask for TLS client certificates issued by this CA")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    ap.add_argument("--port-file", help="write the chosen port here once listening")
    ap.add_argument("--quiet", action="store_true", help="no request log on stderr")
    args = ap.parse_args()
    QUIET = args.quiet

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        ctx.load_verify_locations(args.client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    server = Server(("127.0.0.1", args.port), Handler)
    server.ssl_context = ctx
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    log("listening on https://127.0.0.1:%d" % port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A scriptable fake of the Azure IMDS managed-identity token endpoint.

For integration tests only: binds 127.0.0.1, answers

    GET /metadata/identity/oauth2/token?api-version=...&resource=...

the way IMDS does (reference/azure-managed-identity.md section 1: Metadata
header required, all-string fields, selectors echoed), and lets the test
script its behaviour through a control API on the same port:

    POST /_fake/config  {"lifetime": 3600, "status": 200, "error_body": null,
                         "retry_after": null, "delay": 0, "same_token": false,
                         "body": null, "sequence": null,
                         "identity_header": "fake-identity-header",
                         "error_message": null,
                         "roles": ["Sample.Read", "Sample.Write"]}
        replaces the behaviour (omitted keys take these defaults).  sequence
        scripts the next answers: a list whose items (a status, or
        {"status", "retry_after", "error_body"}) are used one per token
        request, before falling back to the rest of the config.
    GET  /_fake/stats   {"requests", "by_resource", "by_status", "last_query",
                         "last_headers", "issued", "in_flight", "max_in_flight",
                         "log"}; log has one {"t", "end", "path", "resource",
                         "status"} per token request, t and end on the
                         CLOCK_MONOTONIC timeline of time.monotonic()
    POST /_fake/reset   resets counters, issued tokens and config

The same port also fakes App Service's managed-identity endpoint (reference
section 2.1, 2019-08-01 protocol):

    GET /msi/token?api-version=2019-08-01&resource=...[&client_id=|&principal_id=|&mi_res_id=]
        with X-IDENTITY-HEADER equal to the configured identity_header
        (else 401); answers {access_token, expires_on, not_before, resource,
        token_type, client_id} with string values and no expires_in; errors
        in App Service's {"statusCode", "message", "correlationId"} shape.
        error_message, when set, replaces every such error's message, with
        "{header}" in it replaced by the X-IDENTITY-HEADER value presented
        (an upstream that echoes the secret, for the redaction tests).

It also answers IMDS's other paths the way a VM's IMDS does, for bearerd's
relay (imds_relay): GET /metadata/instance[/...] (a small compute document,
or text with format=text), /metadata/versions, /metadata/attested/document,
and GET or POST /metadata/scheduledevents; each needs Metadata: true (else
400) and is recorded in stats "other" as {"method", "path", "query",
"metadata", "loop", "content_type", "body"} (loop: whether an X-Bearerd-Loop
field came with it).  Every token request's X-Bearerd-Loop presence is in
stats "loop_fields" (a count).

With --jwt-key PEM (an RSA private key) the tokens are RS256 JWTs signed with
it (header kid = --jwt-kid), with claims iss (--jwt-issuer), aud (the
resource), sub (the selector as "name=value", or "system"), roles (the
config's "roles"), iat, nbf and exp (= expires_on), so that an API can verify
them against the key's JWKS (tests/fakes/protected_api.py --jwks-file).
--jwt-tenant TID adds the claim tid (the Azure CLI reads the tenant there).

Usage: fake_imds.py [--port 0] [--port-file PATH] [--quiet]
                    [--jwt-key PEM [--jwt-kid KID] [--jwt-issuer ISS] [--jwt-tenant TID]]
The chosen port is written to PATH once the socket listens.
Standard library only, but for --jwt-key (python3-jwt).  Token values never
appear in the log.
"""

import argparse
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

TOKEN_PATH = "/metadata/identity/oauth2/token"
APPSERVICE_PATH = "/msi/token"
APPSERVICE_API_VERSION = "2019-08-01"
APPSERVICE_SELECTORS = ("client_id", "principal_id", "object_id", "mi_res_id")
API_VERSIONS = ["2018-02-01", "2018-04-02", "2019-08-01", "2021-02-01", "2023-07-01"]
SELECTORS = ("client_id", "object_id", "msi_res_id")
MAX_CONTROL_BODY = 1 << 20

DEFAULT_CONFIG = {
    "lifetime": 3600,
    "status": 200,
    "error_body": None,
    "retry_after": None,
    "delay": 0,
    "same_token": False,
    "body": None,
    "sequence": None,
    "identity_header": "fake-identity-header",
    "error_message": None,
    "roles": ["Sample.Read", "Sample.Write"],
}

CONFIG_TYPES = {
    "lifetime": (int,),
    "status": (int,),
    "error_body": (str, type(None)),
    "retry_after": (int, type(None)),
    "delay": (int, float),
    "same_token": (bool,),
    "body": (str, type(None)),
    "sequence": (list, type(None)),
    "identity_header": (str,),
    "error_message": (str, type(None)),
    "roles": (list,),
}

ERROR_NAMES = {
    400: "bad_request",
    401: "unknown_source",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    410: "gone",
    429: "too_many_requests",
    500: "unknown",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}

QUIET = False
JWT = None  # {"key", "kid", "issuer"} with --jwt-key


def log(msg):
    if not QUIET:
        sys.stderr.write("fake_imds: %s\n" % msg)
        sys.stderr.flush()


class State:
    """Everything the handlers share, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.config = dict(DEFAULT_CONFIG)
        self.requests = 0
        self.by_resource = {}
        self.by_status = {}
        self.last_query = {}
        self.last_headers = {}
        self.issued = []
        self.current = {}  # (resource, selector) -> (token, expires_on), for same_token
        self.serial = 0
        self.sequence = []  # scripted answers still to give
        self.in_flight = 0
        self.max_in_flight = 0
        self.log = []  # one entry per token request
        self.other = []  # requests for IMDS's other paths
        self.loop_fields = 0  # token requests that carried X-Bearerd-Loop

    def stats(self):
        return {
            "requests": self.requests,
            "by_resource": dict(self.by_resource),
            "by_status": dict(self.by_status),
            "last_query": dict(self.last_query),
            "last_headers": dict(self.last_headers),
            "issued": list(self.issued),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "log": [dict(e) for e in self.log],
            "other": [dict(e) for e in self.other],
            "loop_fields": self.loop_fields,
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
        # bool is an int in Python: do not let true pass as a status
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
    if not all(isinstance(r, str) for r in cfg["roles"]):
        raise ValueError("roles must be a list of strings")
    if cfg["sequence"] is not None:
        cfg["sequence"] = [validate_step(step) for step in cfg["sequence"]]
    return cfg


def validate_step(step):
    """One scripted answer: a status, or {"status", "retry_after", "error_body"}."""
    if isinstance(step, int) and not isinstance(step, bool):
        step = {"status": step}
    if not isinstance(step, dict) or not set(step) <= {"status", "retry_after", "error_body"}:
        raise ValueError("sequence items are statuses or {status, retry_after, error_body}")
    status = step.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError("sequence status out of range")
    ra = step.get("retry_after")
    if ra is not None and (not isinstance(ra, int) or isinstance(ra, bool) or ra < 0):
        raise ValueError("sequence retry_after must be an integer >= 0")
    if not isinstance(step.get("error_body"), (str, type(None))):
        raise ValueError("sequence error_body must be a string")
    return {"status": status, "retry_after": ra, "error_body": step.get("error_body")}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is testable
    server_version = "fake-imds"
    sys_version = ""

    # -- plumbing ---------------------------------------------------------

    def log_message(self, fmt, *args):
        pass  # replaced by log_request below: no query strings, no tokens

    def log_request(self, code="-", size="-"):
        path = urlsplit(self.path).path
        log("%s %s -> %s" % (self.command, path, code))

    def send(self, status, body, content_type="application/json", extra=None):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def send_json(self, status, doc, extra=None):
        self.send(status, json.dumps(doc), extra=extra)

    def read_body(self):
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise ValueError("bad Content-Length")
        if n < 0 or n > MAX_CONTROL_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n)

    # -- IMDS's other paths (what bearerd's imds_relay passes on) -----------

    OTHER = ("/metadata/instance", "/metadata/versions", "/metadata/attested",
             "/metadata/scheduledevents")

    def other(self, body=b""):
        parts = urlsplit(self.path)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        with STATE.lock:
            STATE.other.append({"method": self.command, "path": path, "query": parts.query,
                                "metadata": self.headers.get("Metadata"),
                                "loop": self.headers.get("X-Bearerd-Loop") is not None,
                                "content_type": self.headers.get("Content-Type"),
                                "body": body.decode("utf-8", "replace")})
        if self.headers.get("Metadata") != "true":
            self.send_json(400, {"error": "Bad request. Required metadata header not "
                                          "specified"})
        elif path.startswith("/metadata/scheduledevents"):
            if self.command == "POST":
                self.send(200, b"", content_type="text/plain")
            else:
                self.send_json(200, {"DocumentIncarnation": 1, "Events": []})
        elif path.startswith("/metadata/instance"):
            if query.get("format") == "text":
                self.send(200, "fake-vm", content_type="text/plain; charset=utf-8")
            else:
                self.send_json(200, {"compute": {"name": "fake-vm", "location": "nowhere"}})
        elif path == "/metadata/versions":
            self.send_json(200, {"apiVersions": API_VERSIONS})
        elif path.startswith("/metadata/attested"):
            self.send_json(200, {"encoding": "pkcs7", "signature": "ZmFrZQ=="})
        else:
            self.send_json(404, {"error": "not_found"})

    # -- routing ----------------------------------------------------------

    def do_GET(self):
        path = urlsplit(self.path).path
        if path in (TOKEN_PATH, TOKEN_PATH + "/"):
            self.token()
        elif path.lower() in (APPSERVICE_PATH, APPSERVICE_PATH + "/"):
            self.token(appservice=True)
        elif path.startswith(self.OTHER):
            self.other()
        elif path == "/_fake/stats":
            with STATE.lock:
                doc = STATE.stats()
            self.send_json(200, doc)
        else:
            self.send_json(404, {"error": "not_found", "error_description": "Not found"})

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
                cfg = validate_config(json.loads(body.decode("utf-8") or "null"))
            except (ValueError, UnicodeDecodeError) as e:
                self.send_json(400, {"error": str(e)})
                return
            with STATE.lock:
                STATE.config = cfg
                STATE.sequence = list(cfg["sequence"] or [])
            self.send_json(200, {"ok": True, "config": cfg})
        elif path == "/_fake/reset":
            with STATE.lock:
                STATE.reset()
            self.send_json(200, {"ok": True})
        elif path.startswith("/metadata/scheduledevents"):
            self.other(body)
        elif path in (TOKEN_PATH, TOKEN_PATH + "/"):
            self.send_json(405, {"error": "method_not_allowed",
                                 "error_description": "The method is not allowed"})
        else:
            self.send_json(404, {"error": "not_found", "error_description": "Not found"})

    def do_PUT(self):
        self.send_json(405, {"error": "method_not_allowed",
                             "error_description": "The method is not allowed"})

    do_DELETE = do_PUT
    do_PATCH = do_PUT

    # -- the token endpoint -----------------------------------------------

    def token(self, appservice=False):
        pairs = parse_qsl(urlsplit(self.path).query, keep_blank_values=True)
        query = {}
        duplicate = False
        for k, v in pairs:
            if k in query:
                duplicate = True
            query.setdefault(k, v)
        resource = query.get("resource", "")

        with STATE.lock:
            STATE.requests += 1
            STATE.by_resource[resource] = STATE.by_resource.get(resource, 0) + 1
            STATE.last_query = dict(query)
            STATE.last_headers = {k: v for k, v in self.headers.items()}
            if self.headers.get("X-Bearerd-Loop") is not None:
                STATE.loop_fields += 1
            cfg = dict(STATE.config)
            step = STATE.sequence.pop(0) if STATE.sequence else None
            STATE.in_flight += 1
            STATE.max_in_flight = max(STATE.max_in_flight, STATE.in_flight)
            entry = {"t": time.monotonic(), "end": None,
                     "path": "appservice" if appservice else "imds",
                     "resource": resource, "status": None}
            STATE.log.append(entry)

        try:
            if cfg["delay"]:
                time.sleep(cfg["delay"])
            if step is not None:
                cfg["status"] = step["status"]
                cfg["retry_after"] = step["retry_after"]
                cfg["error_body"] = step["error_body"]
                cfg["body"] = None
            if appservice:
                status, body, extra = self.appservice_answer(query, duplicate, cfg)
            else:
                status, body, extra = self.token_answer(query, duplicate, cfg)
        finally:
            with STATE.lock:
                STATE.in_flight -= 1
        with STATE.lock:
            key = str(status)
            STATE.by_status[key] = STATE.by_status.get(key, 0) + 1
            entry["status"] = status
            entry["end"] = time.monotonic()
        self.send(status, body, extra=extra)

    def issue(self, resource, selector, cfg):
        """A token for (resource, selector): (token, expires_on, now)."""
        now = int(time.time())
        with STATE.lock:
            key = (resource, selector)
            held = STATE.current.get(key)
            if cfg["same_token"] and held is not None and held[1] > now:
                token, expires_on = held
            else:
                STATE.serial += 1
                expires_on = now + int(cfg["lifetime"])
                if JWT is not None:
                    token = jwt_token(resource, selector, cfg, now, expires_on, STATE.serial)
                else:
                    token = "fake.%d.%s" % (STATE.serial, secrets.token_hex(16))
                STATE.current[key] = (token, expires_on)
                STATE.issued.append(token)
        return token, expires_on, now

    def appservice_answer(self, query, duplicate, cfg):
        """App Service (2019-08-01): Returns (status, body, extra headers)."""
        extra = {}
        if cfg["retry_after"] is not None:
            extra["Retry-After"] = str(cfg["retry_after"])

        presented = self.headers.get("X-IDENTITY-HEADER")

        def error(status, message):
            if cfg["error_message"] is not None:
                message = cfg["error_message"].replace("{header}", presented or "")
            return status, json.dumps({"statusCode": status, "message": message,
                                       "correlationId": "fake-corr-%d" % STATE.requests}), extra

        if presented is None or not secrets.compare_digest(
                presented.encode(), cfg["identity_header"].encode()):
            return error(401, "Unauthorized: the X-IDENTITY-HEADER is missing or wrong")
        if duplicate:
            return error(400, "Duplicate query parameters")
        if query.get("api-version") != APPSERVICE_API_VERSION:
            return error(400, "api-version is missing or not supported")
        if not query.get("resource"):
            return error(400, "resource is required")
        selectors = [s for s in APPSERVICE_SELECTORS if s in query]
        if len(selectors) > 1:
            return error(400, "Only one of client_id, principal_id, mi_res_id may be given")

        if cfg["body"] is not None:
            return cfg["status"], cfg["body"], extra
        if cfg["status"] != 200:
            if cfg["error_body"] is not None:
                return cfg["status"], cfg["error_body"], extra
            return error(cfg["status"], "fake_imds scripted error %d" % cfg["status"])

        resource = query["resource"]
        selector = (selectors[0], query[selectors[0]]) if selectors else None
        token, expires_on, now = self.issue(resource, selector, cfg)
        doc = {
            "access_token": token,
            "expires_on": str(expires_on),
            "not_before": str(now),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": (query["client_id"] if selector and selector[0] == "client_id"
                          else "fake-client-id"),
        }
        if selector is not None:
            doc[selector[0]] = selector[1]
        return 200, json.dumps(doc), extra

    def token_answer(self, query, duplicate, cfg):
        """Returns (status, body, extra headers) for one token request."""
        extra = {}
        if cfg["retry_after"] is not None:
            extra["Retry-After"] = str(cfg["retry_after"])

        def error(status, code, description):
            return status, json.dumps({"error": code, "error_description": description}), extra

        # what real IMDS checks, in its order
        if self.headers.get("Metadata") != "true":
            return error(400, "invalid_request", "Required metadata header not specified")
        if self.headers.get("X-Forwarded-For") is not None:
            return error(400, "invalid_request", "X-Forwarded-For header is not allowed")
        if duplicate:
            return error(400, "invalid_request", "Duplicate query parameters")
        if query.get("api-version") not in API_VERSIONS:
            return 400, json.dumps({
                "error": "Bad request. api-version is invalid or was not specified in the "
                         "request. For more information refer to aka.ms/azureimds",
                "newest-versions": list(reversed(API_VERSIONS[-3:])),
            }), extra
        if not query.get("resource"):
            return error(400, "invalid_request", "Required audience parameter not specified")
        selectors = [s for s in SELECTORS if s in query]
        if len(selectors) > 1:
            return error(400, "invalid_request",
                         "Only one of client_id, object_id, msi_res_id may be given")

        # scripted behaviour
        if cfg["body"] is not None:
            return cfg["status"], cfg["body"], extra
        if cfg["status"] != 200:
            status = cfg["status"]
            if cfg["error_body"] is not None:
                return status, cfg["error_body"], extra
            return error(status, ERROR_NAMES.get(status, "unknown"),
                         "fake_imds scripted error %d" % status)

        resource = query["resource"]
        selector = (selectors[0], query[selectors[0]]) if selectors else None
        token, expires_on, now = self.issue(resource, selector, cfg)
        doc = {
            "access_token": token,
            "refresh_token": "",
            "expires_in": str(expires_on - now),
            "expires_on": str(expires_on),
            "ext_expires_in": str(expires_on - now),
            "not_before": str(now),
            "resource": resource,
            "token_type": "Bearer",
        }
        if selector is not None:
            doc[selector[0]] = selector[1]
        return 200, json.dumps(doc), extra


def jwt_token(resource, selector, cfg, now, expires_on, serial):
    """An RS256 JWT for (resource, selector), verifiable with --jwt-key's public key."""
    import jwt
    claims = {"iss": JWT["issuer"], "aud": resource,
              "sub": "%s=%s" % selector if selector else "system",
              "roles": list(cfg["roles"]), "iat": now, "nbf": now, "exp": expires_on,
              "jti": "fake-%d" % serial}
    if JWT.get("tenant"):
        claims["tid"] = JWT["tenant"]
    return jwt.encode(claims, JWT["key"], algorithm="RS256", headers={"kid": JWT["kid"]})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # clients that time out or abort mid-answer are part of the tests
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        log("error handling a request: %r" % (exc,))


def main():
    global QUIET, JWT
    ap = argparse.ArgumentParser(description="fake Azure IMDS token endpoint (loopback only)")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    ap.add_argument("--port-file", help="write the chosen port here once listening")
    ap.add_argument("--quiet", action="store_true", help="no request log on stderr")
    ap.add_argument("--jwt-key", help="issue RS256 JWTs signed with this RSA private key (PEM)")
    ap.add_argument("--jwt-kid", default="fake-imds-key", help="the JWTs' kid")
    ap.add_argument("--jwt-issuer", default="fake-imds", help="the JWTs' iss")
    ap.add_argument("--jwt-tenant", help="the JWTs' tid")
    args = ap.parse_args()
    QUIET = args.quiet
    if args.jwt_key:
        with open(args.jwt_key) as f:
            JWT = {"key": f.read(), "kid": args.jwt_kid, "issuer": args.jwt_issuer,
                   "tenant": args.jwt_tenant}

    server = Server(("127.0.0.1", args.port), Handler)  # binds and listens
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    log("listening on 127.0.0.1:%d" % port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

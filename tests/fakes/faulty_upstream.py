#!/usr/bin/env python3
"""A fake Azure IMDS token endpoint with switchable faults, for fault injection.

For integration tests only: binds 127.0.0.1 and nothing else.  Three ports:

    control   POST /_fake/fault {"fault": NAME, "retry_after": 2}   switch the fault
              GET  /_fake/stats                                     counters
              POST /_fake/reset                                     fault "none", counters 0
    plain     GET /metadata/identity/oauth2/token?api-version=...&resource=...  (HTTP)
    tls       the same over TLS (--tls-cert/--tls-key), or, while the fault is
              "tls_untrusted", with the certificate of --bad-cert/--bad-key, or
              while it is "tls_wrong_host", with --wrong-cert/--wrong-key (a
              certificate from the trusted CA for another name)

Token answers follow reference/azure-managed-identity.md section 1 (Metadata:
true required, every field a string).  Every answer carries Connection: close,
so that a fault applies to the very next request (no reused connection slips
past "refuse" or "tls_untrusted").

Faults (NAME):
    none             a fresh token per request, expires_in 3600
    refuse           the plain and TLS listeners are closed (connection refused)
    hang             accept and read the request, never answer
    stall_body       headers with Content-Length 4096, 16 bytes of body, then nothing
    http_500, http_503, http_410   IMDS-style error JSON with that status
    http_429         429 with Retry-After (retry_after seconds, default 2)
    entra_400        400 with an Entra (AADSTS) error document
    malformed_json   200 with a truncated JSON document
    no_access_token  200 with a token answer lacking access_token
    expires_zero, expires_negative, expires_huge, expires_nan, expires_short
                     200 with expires_in "0", "-60", "999999999999", "soon", "2"
    body_10mb        200 with Content-Length 10 MiB, streamed
    body_10mb_chunked  200 with a chunked body of 10 MiB, no length given
    tls_untrusted    TLS handshakes use the untrusted certificate (plain port answers)
    tls_wrong_host   TLS handshakes use the trusted CA's certificate for another host

A hung or stalled connection is released (closed) as soon as the fault changes,
and after 60 s at the latest.  Token values are never logged.

Usage: faulty_upstream.py --port-file PATH [--tls-cert C --tls-key K --bad-cert C --bad-key K
                                            --wrong-cert C --wrong-key K]
PATH receives one line "control plain tls" (tls 0 without certificates).
Standard library only.
"""

import argparse
import json
import os
import secrets
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

TOKEN_PATH = "/metadata/identity/oauth2/token"
BIG = 10 * 1024 * 1024
HOLD_MAX = 60.0

FAULTS = {
    "none", "refuse", "hang", "stall_body", "http_500", "http_503", "http_410", "http_429",
    "entra_400", "malformed_json", "no_access_token", "expires_zero", "expires_negative",
    "expires_huge", "expires_nan", "expires_short", "body_10mb", "body_10mb_chunked",
    "tls_untrusted", "tls_wrong_host",
}

EXPIRES = {
    "expires_zero": "0",
    "expires_negative": "-60",
    "expires_huge": "999999999999",
    "expires_nan": "soon",
    "expires_short": "2",
}

ENTRA_400 = {
    "error": "invalid_resource",
    "error_description": "AADSTS500011: The resource principal named api://missing was not "
                         "found in the tenant named contoso. Trace ID: "
                         "0000aaaa-11bb-cccc-dd22-eeeeee333333 Correlation ID: "
                         "aaaa0000-bb11-2222-33cc-444444dddddd Timestamp: 2026-01-01 00:00:00Z",
    "error_codes": [500011],
    "timestamp": "2026-01-01 00:00:00Z",
    "trace_id": "0000aaaa-11bb-cccc-dd22-eeeeee333333",
    "correlation_id": "aaaa0000-bb11-2222-33cc-444444dddddd",
}


def log(msg):
    sys.stderr.write("faulty_upstream: %s\n" % msg)
    sys.stderr.flush()


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.fault = "none"
        self.retry_after = 2
        self.serial = 0
        self.requests = 0
        self.connections = 0
        self.by_fault = {}
        self.issued = 0

    def stats(self):
        return {"fault": self.fault, "requests": self.requests,
                "connections": self.connections, "by_fault": dict(self.by_fault),
                "issued": self.issued}

    def hold(self, fault):
        """Blocks while fault is still the current one (bounded)."""
        end = time.monotonic() + HOLD_MAX
        with self.lock:
            while self.fault == fault:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self.changed.wait(left)


STATE = State()
LISTENERS = None  # set in main


class DataHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "faulty-upstream"
    sys_version = ""

    def log_message(self, fmt, *args):
        pass

    def send_body(self, status, body, extra=None):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def error(self, status, code, description, extra=None):
        self.send_body(status, json.dumps({"error": code, "error_description": description}),
                       extra)

    def do_GET(self):
        self.close_connection = True
        parts = urlsplit(self.path)
        if parts.path not in (TOKEN_PATH, TOKEN_PATH + "/"):
            self.error(404, "not_found", "Not found")
            return
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        with STATE.lock:
            STATE.requests += 1
            fault = STATE.fault
            retry_after = STATE.retry_after
            STATE.by_fault[fault] = STATE.by_fault.get(fault, 0) + 1
        if self.headers.get("Metadata") != "true":
            self.error(400, "invalid_request", "Required metadata header not specified")
            return
        if query.get("api-version") != "2018-02-01" or not query.get("resource"):
            self.error(400, "invalid_request", "bad api-version or resource")
            return
        try:
            self.answer(fault, query["resource"], retry_after)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass  # the daemon gave up on us: part of the tests

    def token_doc(self, resource, expires_in="3600"):
        now = int(time.time())
        with STATE.lock:
            STATE.serial += 1
            STATE.issued += 1
            serial = STATE.serial
        try:
            expires_on = str(now + int(expires_in))
        except ValueError:
            expires_on = expires_in
        return {
            "access_token": "faulty.%d.%s" % (serial, secrets.token_hex(16)),
            "refresh_token": "",
            "expires_in": expires_in,
            "expires_on": expires_on,
            "ext_expires_in": expires_in,
            "not_before": str(now),
            "resource": resource,
            "token_type": "Bearer",
        }

    def answer(self, fault, resource, retry_after):
        if fault in ("none", "refuse", "tls_untrusted", "tls_wrong_host"):
            # refuse: a connection accepted just before the listener closed
            self.send_body(200, json.dumps(self.token_doc(resource)))
        elif fault == "hang":
            STATE.hold(fault)
        elif fault == "stall_body":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4096")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b'{"access_token":')
            self.wfile.flush()
            STATE.hold(fault)
        elif fault in ("http_500", "http_503", "http_410"):
            status = int(fault[5:])
            self.error(status, {500: "unknown", 503: "service_unavailable", 410: "gone"}[status],
                       "faulty upstream: scripted %d" % status)
        elif fault == "http_429":
            self.error(429, "too_many_requests", "faulty upstream: slow down",
                       {"Retry-After": str(retry_after)})
        elif fault == "entra_400":
            self.send_body(400, json.dumps(ENTRA_400))
        elif fault == "malformed_json":
            self.send_body(200, '{"access_token":"faulty.malformed","expires_in":"3600",')
        elif fault == "no_access_token":
            doc = self.token_doc(resource)
            del doc["access_token"]
            self.send_body(200, json.dumps(doc))
        elif fault in EXPIRES:
            self.send_body(200, json.dumps(self.token_doc(resource, EXPIRES[fault])))
        elif fault == "body_10mb":
            self.big_body(chunked=False)
        elif fault == "body_10mb_chunked":
            self.big_body(chunked=True)

    def big_body(self, chunked):
        """A token answer padded to 10 MiB with a long string member."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(BIG))
        self.send_header("Connection", "close")
        self.end_headers()
        head = b'{"access_token":"faulty.big","expires_in":"3600","pad":"'
        tail = b'"}'
        piece = b"x" * 65536
        left = BIG - len(head) - len(tail)
        parts = [head]
        while left > 0:
            n = min(left, len(piece))
            parts.append(piece[:n])
            left -= n
        parts.append(tail)
        for p in parts:
            if chunked:
                self.wfile.write(b"%x\r\n" % len(p) + p + b"\r\n")
            else:
                self.wfile.write(p)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class DataServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr, contexts=None):
        self.contexts = contexts  # {fault or "none": ssl context}, or None for plain HTTP
        super().__init__(addr, DataHandler)

    def finish_request(self, request, client_address):
        with STATE.lock:
            STATE.connections += 1
            fault = STATE.fault
        if self.contexts is not None:
            ctx = self.contexts.get(fault, self.contexts["none"])
            request.settimeout(10)
            try:
                request = ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # the daemon refused our certificate: the point of the fault
            request.settimeout(None)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
            return
        log("error handling a request: %r" % (exc,))


class Listeners:
    """The data servers, closed while the fault is "refuse" and reopened on the same ports."""

    def __init__(self, contexts):
        self.contexts = contexts
        self.ports = [0, 0]
        self.servers = [None, None]
        self.lock = threading.Lock()
        self.open()

    def _start(self, i):
        ctx = None if i == 0 else self.contexts
        if i == 1 and ctx is None:
            return
        srv = DataServer(("127.0.0.1", self.ports[i]), ctx)
        self.ports[i] = srv.server_address[1]
        self.servers[i] = srv
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def open(self):
        with self.lock:
            for i in (0, 1):
                if self.servers[i] is None:
                    self._start(i)

    def close(self):
        with self.lock:
            for i in (0, 1):
                srv = self.servers[i]
                if srv is not None:
                    srv.shutdown()
                    srv.server_close()
                    self.servers[i] = None


def set_fault(fault, retry_after):
    if fault == "refuse":
        LISTENERS.close()
    else:
        LISTENERS.open()
    with STATE.lock:
        STATE.fault = fault
        if retry_after is not None:
            STATE.retry_after = retry_after
        STATE.changed.notify_all()


class ControlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/_fake/stats":
            with STATE.lock:
                self.reply(200, STATE.stats())
        else:
            self.reply(404, {"error": "not_found"})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > 65536:
            self.reply(400, {"error": "body too large"})
            return
        try:
            doc = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            self.reply(400, {"error": "not JSON"})
            return
        if self.path == "/_fake/fault":
            fault = doc.get("fault")
            retry_after = doc.get("retry_after")
            if fault not in FAULTS or not (retry_after is None or isinstance(retry_after, int)):
                self.reply(400, {"error": "unknown fault %r" % (fault,)})
                return
            set_fault(fault, retry_after)
            log("fault %s" % fault)
            self.reply(200, {"ok": True})
        elif self.path == "/_fake/reset":
            set_fault("none", 2)
            with STATE.lock:
                STATE.requests = STATE.connections = STATE.issued = 0
                STATE.by_fault = {}
            self.reply(200, {"ok": True})
        else:
            self.reply(404, {"error": "not_found"})


def tls_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def main():
    global LISTENERS
    ap = argparse.ArgumentParser(description="fake IMDS with faults (loopback only)")
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--bad-cert")
    ap.add_argument("--bad-key")
    ap.add_argument("--wrong-cert")
    ap.add_argument("--wrong-key")
    args = ap.parse_args()

    contexts = None
    if args.tls_cert:
        contexts = {"none": tls_context(args.tls_cert, args.tls_key),
                    "tls_untrusted": tls_context(args.bad_cert, args.bad_key),
                    "tls_wrong_host": tls_context(args.wrong_cert, args.wrong_key)}
    LISTENERS = Listeners(contexts)
    control = ThreadingHTTPServer(("127.0.0.1", 0), ControlHandler)
    control.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %d %d\n" % (control.server_address[1], LISTENERS.ports[0],
                                LISTENERS.ports[1]))
    os.replace(tmp, args.port_file)
    log("control %d plain %d tls %d" % (control.server_address[1], *LISTENERS.ports))
    try:
        control.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

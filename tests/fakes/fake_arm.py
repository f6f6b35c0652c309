#!/usr/bin/env python3
"""A stand-in for Azure Resource Manager's subscription list, over TLS.

`az login --identity` lists the subscriptions its token can see at
https://management.azure.com/subscriptions; tests/integration/
test_legacy_clients.py points that name at this server (a private /etc/hosts)
with a certificate from the test CA that az trusts (REQUESTS_CA_BUNDLE).

    GET /subscriptions?api-version=...   {"value": [one subscription]} when
        the request has Authorization: Bearer <token>, else 401
    GET /tenants?api-version=...         {"value": [the tenant]}
    GET /_fake/stats                     {"requests": [{"method", "path",
        "query", "token_sha256"}]}: never a token, only its SHA-256

Usage: fake_arm.py --cert PEM --key PEM --tenant TID --subscription SID
                   [--port 443] [--port-file PATH]
Binds 127.0.0.1 only.  Standard library only.
"""

import argparse
import hashlib
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

LOCK = threading.Lock()
REQUESTS = []
ARGS = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-arm"
    sys_version = ""

    def log_message(self, fmt, *args):
        pass  # nothing with headers or queries

    def send_json(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = urlsplit(self.path)
        if parts.path == "/_fake/stats":
            with LOCK:
                self.send_json(200, {"requests": list(REQUESTS)})
            return
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        with LOCK:
            REQUESTS.append({"method": "GET", "path": parts.path, "query": parts.query,
                             "token_sha256": hashlib.sha256(token.encode()).hexdigest()
                             if token else None})
        if token is None:
            self.send_json(401, {"error": {"code": "AuthenticationFailed",
                                           "message": "no bearer token"}})
        elif parts.path.rstrip("/") == "/subscriptions":
            self.send_json(200, {"value": [{
                "id": f"/subscriptions/{ARGS.subscription}",
                "subscriptionId": ARGS.subscription, "tenantId": ARGS.tenant,
                "displayName": "bearerd-test", "state": "Enabled",
                "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01",
                                         "quotaId": "Test", "spendingLimit": "Off"},
                "authorizationSource": "RoleBased", "managedByTenants": []}]})
        elif parts.path.rstrip("/") == "/tenants":
            self.send_json(200, {"value": [{"id": f"/tenants/{ARGS.tenant}",
                                            "tenantId": ARGS.tenant}]})
        else:
            self.send_json(404, {"error": {"code": "NotFound", "message": parts.path}})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--subscription", required=True)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--port-file")
    ARGS = ap.parse_args()
    server = Server(("127.0.0.1", ARGS.port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ARGS.cert, ARGS.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    if ARGS.port_file:
        with open(ARGS.port_file + ".tmp", "w") as f:
            f.write("%d\n" % server.server_address[1])
        os.replace(ARGS.port_file + ".tmp", ARGS.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

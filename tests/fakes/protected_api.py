#!/usr/bin/python3
"""A small OAuth-protected API, the API Management scenario of the proxy.

It validates RS256 JWTs against the dev identity's JWKS (fetched from
bearerd's GET /v1/dev/jwks.json on its Unix socket, or read from a file):
signature, iss, aud (the Application ID URI, api://apim-demo by default),
exp and nbf, and requires app role Sample.Read for GET, Sample.Write for POST
and Sample.Delete for DELETE.  Anything else is a 401 with a Bearer challenge.
Answers echo the token's iat so that a caller can see the token is cached.

Besides the protected /api/... paths (any path is protected unless listed
below) it has test hooks, never protected:
  POST /_fake/revoke?iat_le=N   tokens issued at or before N get invalid_token
  GET  /_fake/stats             requests, connections, the last request's headers
  GET  /_open/download?n=BYTES  streams n bytes (chunked with &chunked=1)
  POST /_open/upload            reads the body (any framing), answers its length
  GET  /_open/slow              never answers (for gateway timeouts)
  GET  /_open/redirect          302 to another host
  GET  /_open/extra             a response followed by bytes that look like a second one
  GET  /_open/late?s=S          a 204, then S seconds later bytes that look like a response
  POST /_open/early?s=S         a 400 at once, the body left unread for S seconds (then it
                                is read as the next request on the connection)
  GET  /_open/drip?n=N&every=S  a chunked body of N small chunks, one every S seconds
Run: protected_api.py --port 0 --port-file F --jwks-socket S [--tls-cert C --tls-key K]
"""

import argparse
import hashlib
import http.client
import json
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jwt

ROLE_FOR = {"GET": "Sample.Read", "HEAD": "Sample.Read", "POST": "Sample.Write",
            "DELETE": "Sample.Delete"}


class UnixConn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path_ = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.path_)
        self.sock = s


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.keys = None
        self.revoked_iat = -1
        self.requests = 0
        self.connections = 0
        self.last_headers = {}
        self.by_path = {}

    def jwks(self):
        with self.lock:
            if self.keys is not None:
                return self.keys
        if self.args.jwks_file:
            with open(self.args.jwks_file) as f:
                data = json.load(f)
        else:
            c = UnixConn(self.args.jwks_socket)
            c.request("GET", "/v1/dev/jwks.json")
            data = json.loads(c.getresponse().read())
            c.close()
        keys = {k["kid"]: jwt.PyJWK(k, algorithm="RS256") for k in data["keys"]}
        with self.lock:
            self.keys = keys
        return keys


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "protected-api/1"

    def log_message(self, fmt, *a):
        sys.stderr.write("protected_api: " + (fmt % a) + "\n")

    def setup(self):
        super().setup()
        st = self.server.state
        with st.lock:
            st.connections += 1

    # framing helpers

    def read_body(self, sink=None):
        n = 0
        te = self.headers.get("Transfer-Encoding", "")
        if te.lower() == "chunked":
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b""):
                        pass
                    return n
                left = size
                while left:
                    b = self.rfile.read(min(left, 1 << 20))
                    if not b:
                        raise ConnectionError("short chunk")
                    if sink:
                        sink(b)
                    left -= len(b)
                n += size
                self.rfile.read(2)
        left = int(self.headers.get("Content-Length", "0"))
        while left:
            b = self.rfile.read(min(left, 1 << 20))
            if not b:
                raise ConnectionError("short body")
            if sink:
                sink(b)
            left -= len(b)
            n += len(b)
        return n

    def send_json(self, status, obj, extra=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def deny(self, error, description):
        self.send_json(401, {"error": error, "error_description": description},
                       {"WWW-Authenticate": f'Bearer error="{error}", '
                                            f'error_description="{description}"'})

    # the protected API

    def check_token(self):
        st = self.server.state
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            self.send_json(401, {"error": "missing_token"}, {"WWW-Authenticate": "Bearer"})
            return None
        tok = auth[7:]
        try:
            kid = jwt.get_unverified_header(tok).get("kid")
            key = st.jwks().get(kid)
            if key is None:
                raise jwt.InvalidTokenError("unknown kid")
            claims = jwt.decode(tok, key.key, algorithms=["RS256"],
                                audience=st.args.audience, issuer=st.args.issuer,
                                options={"require": ["exp", "iat", "nbf", "iss", "aud"]})
        except jwt.InvalidTokenError as e:
            self.deny("invalid_token", type(e).__name__)
            return None
        with st.lock:
            revoked = claims["iat"] <= st.revoked_iat
        if revoked:
            self.deny("invalid_token", "token revoked")
            return None
        need = ROLE_FOR.get(self.command)
        if need is None or need not in claims.get("roles", []):
            self.deny("insufficient_scope", f"needs role {need}")
            return None
        return claims

    def handle_any(self):
        st = self.server.state
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        with st.lock:
            st.requests += 1
            if not url.path.startswith("/_fake/"):
                st.last_headers = {k: v for k, v in self.headers.items()}
            st.by_path[url.path] = st.by_path.get(url.path, 0) + 1
        if url.path == "/_fake/stats":
            with st.lock:
                self.send_json(200, {"requests": st.requests, "connections": st.connections,
                                     "last_headers": st.last_headers, "by_path": st.by_path})
            return
        if url.path == "/_fake/revoke":
            with st.lock:
                st.revoked_iat = int(q["iat_le"][0])
            self.send_json(200, {"revoked_iat": st.revoked_iat})
            return
        if url.path == "/_open/slow":
            time.sleep(float(q.get("s", ["3600"])[0]))
            self.send_json(200, {"slept": True})
            return
        if url.path == "/_open/extra":
            # a broken upstream: bytes after the response that look like another one
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle")
            return
        if url.path == "/_open/late":
            # a broken upstream: a body after a 204, arriving a moment later
            self.wfile.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            time.sleep(float(q.get("s", ["0.3"])[0]))
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle")
            except OSError:
                self.close_connection = True
            return
        if url.path == "/_open/early":
            # refuses before reading the body, which stays on the connection
            self.send_json(400, {"error": "refused_early"})
            time.sleep(float(q.get("s", ["0.3"])[0]))
            return
        if url.path == "/_open/drip":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(int(q.get("n", ["5"])[0])):
                self.wfile.write(b"2\r\nab\r\n")
                time.sleep(float(q.get("every", ["0.5"])[0]))
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/_open/redirect":
            self.send_response(302)
            self.send_header("Location", "http://elsewhere.invalid/x")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path == "/_open/upload":
            h = hashlib.sha256()
            n = self.read_body(h.update)
            self.send_json(200, {"received": n, "sha256": h.hexdigest()})
            return
        if url.path == "/_open/download":
            self.download(int(q["n"][0]), q.get("chunked") == ["1"])
            return
        body_len = self.read_body()
        claims = self.check_token()
        if claims is None:
            return
        self.send_json(200, {"method": self.command, "path": self.path, "iat": claims["iat"],
                             "roles": claims.get("roles", []), "body_len": body_len,
                             "host": self.headers.get("Host"),
                             "via": self.headers.get("Via")})

    def download(self, n, chunked):
        block = b"x" * (1 << 20)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        left = n
        while left:
            b = block[:min(left, len(block))]
            if chunked:
                self.wfile.write(b"%x\r\n" % len(b) + b + b"\r\n")
            else:
                self.wfile.write(b)
            left -= len(b)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--jwks-socket")
    ap.add_argument("--jwks-file")
    ap.add_argument("--issuer", default="bearerd-dev")
    ap.add_argument("--audience", default="api://apim-demo")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    args = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    srv.state = State(args)
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    port = srv.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        import os
        os.rename(args.port_file + ".tmp", args.port_file)
    print(f"protected_api listening on {port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()

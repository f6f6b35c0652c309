#!/usr/bin/env python3
"""Unix-socket helper for tests/bench/bench.sh (stdlib only).

  conns.py fill SOCK N [CONNS]
      GET /v1/token?resource=api://bench-resource-NNNNN for N distinct
      resources over CONNS keep-alive connections (default 4); every answer
      must be a 200 carrying an access_token.  Prints "filled N in S s".
  conns.py hold SOCK N
      Opens N connections and keeps them open.  Prints "open N" once all are
      connected, then obeys one command per line on stdin:
        req   send one GET /v1/token/demo on every connection and read the
              answers (the connections then sit idle in keep-alive);
              prints "requested N"
        quit  (or end of input) closes everything and exits.
  conns.py count SOCK PREFIX
      Prints how many entries of GET /v1/status have a resource starting
      with PREFIX.
"""
import json
import socket
import sys
import threading
import time


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    return s


def request(s, target, buf):
    """One keep-alive GET; returns (status, body, leftover bytes)."""
    s.sendall(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise RuntimeError("connection closed before the answer's head")
        buf += d
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(buf) < length:
        d = s.recv(65536)
        if not d:
            raise RuntimeError("connection closed in the answer's body")
        buf += d
    return status, buf[:length], buf[length:]


def fill(path, n, nconn):
    errors = []

    def worker(k):
        try:
            s = connect(path)
            buf = b""
            for i in range(k, n, nconn):
                st, body, buf = request(s, "/v1/token?resource=api%%3A%%2F%%2Fbench-resource-%05d" % i, buf)
                if st != 200 or b'"access_token":"' not in body:
                    raise RuntimeError("resource %d: status %d: %r" % (i, st, body[:200]))
            s.close()
        except Exception as e:  # reported by the main thread
            errors.append(str(e))

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(nconn)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        sys.exit("fill failed: " + "; ".join(errors[:3]))
    print("filled %d in %.1f s" % (n, time.monotonic() - t0), flush=True)


def hold(path, n):
    conns = [connect(path) for _ in range(n)]
    print("open %d" % len(conns), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "req":
            for s in conns:  # send all first, then read: the daemon sees 1000 at once
                s.sendall(b"GET /v1/token/demo HTTP/1.1\r\nHost: localhost\r\n\r\n")
            bad = 0
            for s in conns:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        sys.exit("hold: connection closed")
                    buf += d
                head, _, rest = buf.partition(b"\r\n\r\n")
                if head.split()[1] != b"200":
                    bad += 1
                length = 0
                for ln in head.split(b"\r\n")[1:]:
                    k, _, v = ln.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v.strip())
                while len(rest) < length:
                    d = s.recv(65536)
                    if not d:
                        sys.exit("hold: connection closed")
                    rest += d
            if bad:
                sys.exit("hold: %d answers were not 200" % bad)
            print("requested %d" % n, flush=True)
        elif cmd == "quit":
            break
    for s in conns:
        s.close()


def count(path, prefix):
    s = connect(path)
    st, body, _ = request(s, "/v1/status", b"")
    if st != 200:
        sys.exit("status: %d" % st)
    print(sum(1 for e in json.loads(body) if str(e.get("resource", "")).startswith(prefix)))


def main():
    a = sys.argv[1:]
    if len(a) >= 3 and a[0] == "fill":
        fill(a[1], int(a[2]), int(a[3]) if len(a) > 3 else 4)
    elif len(a) == 3 and a[0] == "hold":
        hold(a[1], int(a[2]))
    elif len(a) == 3 and a[0] == "count":
        count(a[1], a[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

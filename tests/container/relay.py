#!/usr/bin/env python3
"""A TCP relay for the container suite: accepts on HOST:PORT and joins each
connection to TARGET_HOST:TARGET_PORT, both ways, until either side closes.

The suite runs it inside a pod's network namespace (which has only lo) on
169.254.169.254:80, IMDS's address, in front of tests/fakes/fake_imds.py on a
loopback port: the manifests' azure-imds identity then reaches the fake at the
address it uses in Azure, with its config unchanged.

Usage: relay.py HOST PORT TARGET_HOST TARGET_PORT [--ready-file PATH]
PATH is written once the socket listens.  Standard library only; it logs
nothing (the bytes it relays include tokens).
"""

import argparse
import os
import socket
import threading


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def serve(conn, target):
    try:
        up = socket.create_connection(target, timeout=10)
    except OSError:
        conn.close()
        return
    up.settimeout(None)
    t = threading.Thread(target=pump, args=(up, conn), daemon=True)
    t.start()
    pump(conn, up)
    t.join()
    conn.close()
    up.close()


def main():
    ap = argparse.ArgumentParser(description="TCP relay (container suite)")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("target_host")
    ap.add_argument("target_port", type=int)
    ap.add_argument("--ready-file")
    args = ap.parse_args()
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((args.host, args.port))
    ls.listen(64)
    if args.ready_file:
        with open(args.ready_file + ".tmp", "w") as f:
            f.write("listening\n")
        os.replace(args.ready_file + ".tmp", args.ready_file)
    target = (args.target_host, args.target_port)
    while True:
        conn, _ = ls.accept()
        threading.Thread(target=serve, args=(conn, target), daemon=True).start()


if __name__ == "__main__":
    main()

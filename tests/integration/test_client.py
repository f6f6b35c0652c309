"""libbearer's answer reader (client/libbearer.c over common/http_parse.c), against a
fake bearerd on a Unix socket that writes canned answers: what bearerd sends is read,
in whatever pieces it arrives; anything else is refused with a clear error."""

import json
import os
import socket
import subprocess
import threading

import pytest

from conftest import BEARER_GET, BEARERCTL

TOKEN = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJ4In0.c2ln"
BODY = json.dumps({"access_token": TOKEN, "expires_on": 4102444800,
                   "expires_in": 3600}).encode()


class FakeBearerd:
    """Answers each connection with the next canned answer (a list of pieces), then closes."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.path = path
        self.answers = []
        self.requests = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                req = b""
                while b"\r\n\r\n" not in req:
                    b = conn.recv(4096)
                    if not b:
                        break
                    req += b
                self.requests.append(req)
                for piece in self.answers.pop(0):
                    try:
                        conn.sendall(piece)
                    except OSError:
                        break

    def close(self):
        self.sock.close()


@pytest.fixture
def fake_bearerd(tmp_path):
    f = FakeBearerd(tmp_path / "bearerd.sock")
    yield f
    f.close()


def get(fake, *pieces, audience="api"):
    fake.answers.append(list(pieces))
    env = dict(os.environ, BEARERD_SOCKET=str(fake.path))
    return subprocess.run([str(BEARER_GET), audience], env=env, capture_output=True,
                          text=True, timeout=30)


def head(status="200 OK", *fields):
    return ("HTTP/1.1 " + status + "\r\n" + "".join(f + "\r\n" for f in fields) +
            "\r\n").encode()


def test_answer_with_content_length(fake_bearerd):
    r = get(fake_bearerd, head("200 OK", "Content-Type: application/json",
                               f"Content-Length: {len(BODY)}", "Connection: close") + BODY)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [TOKEN, "4102444800"]
    assert fake_bearerd.requests[0].startswith(b"GET /v1/token/api HTTP/1.1\r\n")


def test_answer_framed_by_the_end_of_the_connection(fake_bearerd):
    r = get(fake_bearerd, head("200 OK", "Content-Type: application/json") + BODY)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == TOKEN


def test_long_answer_framed_by_the_end_of_the_connection(fake_bearerd):
    """The reader's buffer grows (wiping each old block) until the connection ends."""
    body = json.dumps({"access_token": TOKEN, "expires_on": 4102444800, "expires_in": 3600,
                       "padding": "x" * 100000}).encode()
    r = get(fake_bearerd, head("200 OK"), *[body[i:i + 7000] for i in range(0, len(body), 7000)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == TOKEN


def test_answer_in_small_pieces(fake_bearerd):
    whole = head("200", f"content-length:{len(BODY)}", "X-Other:  spaced  ") + BODY
    r = get(fake_bearerd, *[whole[i:i + 1] for i in range(len(whole))])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == TOKEN


@pytest.mark.parametrize("answer", [
    head("200 OK", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n",
    head("100 Continue") + head("200 OK", f"Content-Length: {len(BODY)}") + BODY,
    head("200 OK", "Content-Length: 5", "Content-Length: 6") + b"hello",
    head("200 OK", "Content-Length: -1"),
    head("200 OK", "X-Folded: a", " b", f"Content-Length: {len(BODY)}") + BODY,
    head("200 OK", "Bad Name: x"),
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
    b"HTTP/2 200 OK\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.2\r\n",
    head("200 OK", "Content-Length: 100") + b"short",
    b"HTTP/1.1 200 OK\r\nContent-Le",
], ids=["chunked", "1xx", "two-lengths", "negative-length", "obs-fold", "bad-field-name",
        "bare-lf", "http2", "not-http", "short-body", "truncated-head"])
def test_malformed_answers_refused(fake_bearerd, answer):
    r = get(fake_bearerd, answer)
    assert r.returncode == 1
    assert "Protocol error" in r.stderr, r.stderr
    assert TOKEN not in r.stdout + r.stderr


def test_head_too_large(fake_bearerd):
    r = get(fake_bearerd, head("200 OK", *[f"X-Pad-{i}: {'a' * 1000}" for i in range(20)]))
    assert r.returncode == 1
    assert "Message too long" in r.stderr, r.stderr


def test_too_many_fields(fake_bearerd):
    """The parser's bound (HTTP_MAX_HEADERS, 64 fields); bearerd sends fewer than ten."""
    r = get(fake_bearerd, head("200 OK", *[f"X-Pad-{i}: a" for i in range(65)],
                               f"Content-Length: {len(BODY)}") + BODY)
    assert r.returncode == 1
    assert "Message too long" in r.stderr, r.stderr


def test_body_too_large(fake_bearerd):
    r = get(fake_bearerd, head("200 OK", f"Content-Length: {2 * 1024 * 1024}"))
    assert r.returncode == 1
    assert "Message too long" in r.stderr, r.stderr


def test_error_answer_read(fake_bearerd):
    body = b'{"error":"unknown_audience","error_description":"no such audience"}'
    r = get(fake_bearerd, head("404 Not Found", f"Content-Length: {len(body)}") + body)
    assert r.returncode == 1
    assert "No such device or address" in r.stderr, r.stderr


def test_audience_percent_encoded(fake_bearerd):
    """One path segment: every byte but the unreserved ones is %XX (upper case)."""
    r = get(fake_bearerd, head("200 OK", f"Content-Length: {len(BODY)}") + BODY,
            audience="a b/c?d%\u00e9~_.-Z9")
    assert r.returncode == 0, r.stderr
    assert fake_bearerd.requests[0].startswith(
        b"GET /v1/token/a%20b%2Fc%3Fd%25%C3%A9~_.-Z9 HTTP/1.1\r\n")


def test_bearerctl_path_percent_encoded(fake_bearerd):
    fake_bearerd.answers.append([head("202 Accepted", "Content-Length: 2") + b"{}"])
    r = subprocess.run([str(BEARERCTL), "-s", str(fake_bearerd.path), "refresh", "a b/c"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert fake_bearerd.requests[0].startswith(b"POST /v1/refresh/a%20b%2Fc HTTP/1.1\r\n")

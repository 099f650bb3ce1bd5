"""Holds many clients logged in to a pooler and idle, for bench/pgbench.sh's memory figures.

    python3 bench/hold_idle.py PORT COUNT PASSWORD

Logs COUNT clients in as `postgres` (SCRAM-SHA-256, or trust when the pooler asks for nothing),
prints "ready" and waits for a line on stdin; then every client runs one query with a 64 kB
result (a load burst that grows any buffer that follows a message's size), prints "idle again"
and waits for a second line before it exits. Loopback only; every wait is bounded by a timeout.
"""

import base64
import hashlib
import hmac
import os
import socket
import struct
import sys

PORT, COUNT, PASSWORD = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
TIMEOUT = 30.0
# Salted passwords by (salt, iterations): a pooler that keeps one salt per user is not made to
# wait for this script's PBKDF2 10,000 times.
SALTED = {}


class Conn:
    def __init__(self):
        self.sock = socket.create_connection(("127.0.0.1", PORT), timeout=TIMEOUT)
        self.buf = b""

    def send(self, kind, payload):
        self.sock.sendall(kind + struct.pack("!i", len(payload) + 4) + payload)

    def message(self):
        while True:
            if len(self.buf) >= 5:
                (length,) = struct.unpack("!i", self.buf[1:5])
                if len(self.buf) >= length + 1:
                    kind, body = self.buf[:1], self.buf[5 : length + 1]
                    self.buf = self.buf[length + 1 :]
                    return kind, body
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                sys.exit("the pooler closed a connection")
            self.buf += chunk

    def until_ready(self):
        while True:
            kind, body = self.message()
            if kind == b"E":
                sys.exit("error from the pooler: %r" % body)
            if kind == b"Z":
                return

    def login(self):
        body = b"user\0postgres\0database\0postgres\0\0"
        self.sock.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
        kind, body = self.message()
        if kind != b"R":
            sys.exit("unexpected login reply %r" % kind)
        (code,) = struct.unpack("!i", body[:4])
        if code == 10:
            self.scram()
        elif code != 0:
            sys.exit("unsupported authentication request %d" % code)
        self.until_ready()

    def scram(self):
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = "n=,r=" + nonce
        first = ("n,," + first_bare).encode()
        self.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
        _, body = self.message()
        server_first = body[4:].decode()
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        key = (attrs["s"], int(attrs["i"]))
        if key not in SALTED:
            SALTED[key] = hashlib.pbkdf2_hmac("sha256", PASSWORD, base64.b64decode(attrs["s"]), key[1])
        salted = SALTED[key]
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored = hashlib.sha256(client_key).digest()
        final_bare = "c=biws,r=" + attrs["r"]
        auth = ",".join([first_bare, server_first, final_bare]).encode()
        signature = hmac.new(stored, auth, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.send(b"p", (final_bare + ",p=" + base64.b64encode(proof).decode()).encode())
        kind, body = self.message()
        if kind != b"R" or struct.unpack("!i", body[:4])[0] != 12:
            sys.exit("SCRAM refused: %r" % body)
        kind, body = self.message()
        if kind != b"R" or struct.unpack("!i", body[:4])[0] != 0:
            sys.exit("login refused: %r" % body)


conns = []
for _ in range(COUNT):
    c = Conn()
    c.login()
    conns.append(c)
print("ready", flush=True)
sys.stdin.readline()
for c in conns:
    c.send(b"Q", b"SELECT repeat('x', 65536)\0")
    c.until_ready()
print("idle again", flush=True)
sys.stdin.readline()

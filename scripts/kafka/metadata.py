#!/usr/bin/env python3
"""Asks a Kafka broker for its metadata (Metadata v0, no topics) and prints how many
brokers it lists; exits 1 when it does not answer within the timeout.

    metadata.py HOST:PORT [TIMEOUT_S]
"""
import socket
import struct
import sys


def brokers_listed(host, port, timeout):
    client = b"kafka.sh"
    # Request header v1 (api key 3 = Metadata, version 0, correlation id, client id), then
    # an empty topic array: version 0 reads it as "every topic".
    body = struct.pack(">hhih", 3, 0, 7, len(client)) + client + struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(body)) + body)
        head = b""
        while len(head) < 12:
            chunk = s.recv(12 - len(head))
            if not chunk:
                raise OSError("closed")
            head += chunk
    _size, correlation, brokers = struct.unpack(">iii", head)
    if correlation != 7:
        raise OSError("wrong correlation id")
    return brokers


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    try:
        print(brokers_listed(host, int(port), timeout))
    except OSError:
        sys.exit(1)


main()

"""Imported by Python at start-up when a test puts this folder on PYTHONPATH (the shared tiny series in conftest):
every process started then, notebook kernels and the harness's subprocesses included, refuses every non-loopback
connection and name lookup. Each process that loads it appends its pid to $FTLAB_GUARD_LOG, so a test can count the
kernels that ran under it."""

import os
import socket

_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", ""}


def _host(address):
    return address[0] if isinstance(address, tuple) else None


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and _host(address) not in LOCAL:
        raise OSError(f"network access blocked by the test guard: {address}")
    return _connect(self, address)


def getaddrinfo(host, *a, **kw):
    if host not in LOCAL and host is not None:
        raise OSError(f"name lookup blocked by the test guard: {host}")
    return _getaddrinfo(host, *a, **kw)


socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
if os.environ.get("FTLAB_GUARD_LOG"):
    with open(os.environ["FTLAB_GUARD_LOG"], "a") as f:
        f.write(f"{os.getpid()}\n")

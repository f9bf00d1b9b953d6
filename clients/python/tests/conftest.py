"""A real fanoutd on a temporary socket, for the whole test session.

$FANOUTD names the daemon (default: the repository's .build/debug/fanoutd).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import fanout

REPO = Path(__file__).resolve().parents[3]
LEASE_MS = 1500


def _fanoutd() -> str:
    return os.environ.get("FANOUTD") or str(REPO / ".build" / "debug" / "fanoutd")


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


class Daemon:
    """A fanoutd on `directory`/d.sock; start() and stop() may be repeated (same database)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.socket = os.path.join(directory, "d.sock")
        self.log_path = os.path.join(directory, "fanoutd.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        binary = _fanoutd()
        if not os.access(binary, os.X_OK):
            pytest.fail(f"no fanoutd at {binary}: build it (swift build) or set FANOUTD")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--socket", self.socket, "--db", os.path.join(self.directory, "fanout.db"),
                 "--log-level", "warning"],
                stdout=log,
                stderr=subprocess.STDOUT,
                # A short worker lease, so the tests see heartbeats keep long handlers' tasks.
                env=dict(os.environ, FANOUT_WORKER_LEASE_MS=str(LEASE_MS)),
            )
        deadline = time.monotonic() + 15
        while not _answers(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"fanoutd did not start:\n{Path(self.log_path).read_text()}")
            time.sleep(0.05)
        return self.socket

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def running_daemon() -> Iterator[Daemon]:
    directory = tempfile.mkdtemp(prefix="fopy", dir="/tmp")  # short: socket paths are < 108 bytes
    d = Daemon(directory)
    try:
        d.start()
        yield d
    finally:
        d.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def daemon() -> Iterator[str]:
    """Starts fanoutd and yields its socket path."""
    with running_daemon() as d:
        yield d.socket


@pytest.fixture
def client(daemon: str) -> Iterator[fanout.Client]:
    with fanout.Client(daemon, timeout=20) as c:
        yield c


@pytest.fixture
def owner() -> str:
    """A fresh owner label per test, so listings and subscriptions do not mix tests."""
    return f"py-{uuid.uuid4().hex[:10]}"

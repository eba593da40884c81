"""Real PostgreSQL and Redis servers for tests, each in a temporary directory on a free port."""

from __future__ import annotations

import contextlib
import glob
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

from logistik.kafka.embedded import free_port
from tests.support.system import needs


def postgres_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (initdb, pg_ctl)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise RuntimeError(needs(f"PostgreSQL's {name}", "postgresql"))
    return on_path


class PostgresServer:
    """A PostgreSQL cluster on a loopback port, trust auth, removed on stop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lk-pg-"))
        self._as_postgres = os.geteuid() == 0  # PostgreSQL refuses to run as root

    def _run(self, *args: str) -> None:
        command = list(args)
        if self._as_postgres:
            command = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(command)]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        """initdb and start the server; returns when it accepts connections."""
        data = self.dir / "data"
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        self.resume()
        return self

    def pause(self) -> None:
        """Stop the server at once, keeping its data: PostgreSQL down in the middle of a run."""
        self._run(
            postgres_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"
        )

    def resume(self) -> None:
        """Start the server (again); returns when it accepts connections."""
        self._run(
            postgres_bin("pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"'-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off'",
            "start",
        )

    def stop(self) -> None:
        """Stop the server (when it runs) and remove its files."""
        try:
            with contextlib.suppress(subprocess.CalledProcessError):  # already paused
                self.pause()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A logistik database URL."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = f"lk_{uuid.uuid4().hex[:10]}"
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-c",
                f"CREATE DATABASE {name}",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return self.url(name)


class RedisServer:
    """A redis-server on a loopback port without persistence; stop() ends it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lk-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(needs("redis-server", "redis-server"))
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Stop the server."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, which it may stop (pause) and start (resume)."""
    server = PostgresServer().start()
    yield server
    server.stop()

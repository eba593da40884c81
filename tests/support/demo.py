"""`logistik demo` as a real subprocess, in an empty home, with what its banner says."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from logistik.kafka.embedded import free_port
from tests.support.models import wait_until

BANNER_TIMEOUT_S = 90.0  # trains three models and starts a broker on a shared machine


class DemoProcess:
    """The demo started as a new user would: `python -m logistik demo` from an empty home."""

    def __init__(self, workdir: Path, rate: float = 30.0) -> None:
        self.home = workdir / "home"
        self.home.mkdir()
        self.web_port = free_port()
        self.log_path = workdir / "demo.log"
        self.rate = rate
        self.process: subprocess.Popen[bytes] | None = None
        self.broker = ""
        self.login_url = ""

    def start(self) -> DemoProcess:
        """Start the demo and wait for its banner (the web UI, broker and login link)."""
        env = {**os.environ, "HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "logistik", "demo", "--port", str(self.web_port)]
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [*command, "--rate", str(self.rate)],
                cwd=self.home,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._started, timeout_s=BANNER_TIMEOUT_S, what="the demo's banner")
        log = self.log()
        broker = re.search(r"broker (127\.0\.0\.1:\d+)", log)
        login = re.search(r"(http://127\.0\.0\.1:\d+/#login=\S+)", log)
        assert broker and login, log
        self.broker, self.login_url = broker.group(1), login.group(1)
        return self

    def _started(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the demo ended early:\n{self.log()}")
        return "Ctrl-C stops" in self.log()

    @property
    def base_url(self) -> str:
        """Where the demo serves its web UI."""
        return f"http://127.0.0.1:{self.web_port}"

    def log(self) -> str:
        """What the demo printed so far."""
        return self.log_path.read_text(errors="replace")

    def interrupt(self, timeout_s: float = 60.0) -> int:
        """Ctrl-C, and the demo's exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout_s)

    def __enter__(self) -> DemoProcess:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

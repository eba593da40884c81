"""The quick start: the example model and logistik on an embedded broker; Ctrl-C stops both.

    python examples/quickstart.py

Starts examples/echo_model.py on the port examples/quickstart.yaml gives its handler, then
`logistik run --config examples/quickstart.yaml`. When either ends, the other is stopped too.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from logistik import load_config
from logistik.children import die_with_parent

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "quickstart.yaml"
STOP_TIMEOUT_S = 40.0  # logistik's own shutdown grace and then some


def start(*command: str) -> subprocess.Popen[bytes]:
    """A child that Linux stops should this script be killed."""
    return subprocess.Popen([sys.executable, *command], preexec_fn=die_with_parent)


def stop(child: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> None:
    """Ask a child to stop and wait for it (kill it if it takes too long)."""
    if child.poll() is None:
        child.send_signal(signum)
    try:
        child.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def main() -> int:
    """Run both until one ends or we are asked to stop; return logistik's exit code."""
    port = load_config(CONFIG).discovery.handlers[0].port
    model = start(str(HERE / "echo_model.py"), "--port", str(port))
    router = start("-m", "logistik", "run", "--config", str(CONFIG))

    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        # A terminal's Ctrl-C reaches every process of the group at once; a SIGTERM sent to
        # this script alone is passed on.
        stopping.append(signum)
        if signum == signal.SIGTERM:
            router.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        while router.poll() is None and model.poll() is None:
            time.sleep(0.2)
        model_failed = not stopping and router.poll() is None and model.returncode != 0
    finally:
        if stopping:
            # Asked to stop, logistik is stopping already (the model may end first): a
            # second signal would cut its stop short.
            with contextlib.suppress(subprocess.TimeoutExpired):
                router.wait(STOP_TIMEOUT_S)
        stop(router)
        stop(model)
    if model_failed:
        print(f"quickstart: the example model ended (exit {model.returncode})", file=sys.stderr)
        return 1
    return router.returncode


if __name__ == "__main__":
    sys.exit(main())

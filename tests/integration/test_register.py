"""`logistik register` as a real process against Consul (the double, or LK_TEST_CONSUL_URL)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from logistik.commands.register import register
from logistik.kafka.embedded import free_port
from tests.support.consul_fixtures import ConsulTarget, http
from tests.support.models import wait_until

REGISTER = [sys.executable, "-m", "logistik.commands.register"]
SEED_TAGS = ["logistik", "model=model", "node=3", "hostname=mk2", "version=v1"]

# A model stand-in: says it is ready, records the signal it gets, exits with the given code.
CHILD = """
import pathlib, signal, sys
record, code = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def stop(signum, _frame):
    record.write_text(signal.Signals(signum).name)
    sys.exit(code)
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, stop)
pathlib.Path(sys.argv[1] + ".ready").write_text("ready")
while True:
    signal.pause()
"""

# Exits on its own with code 5 once the test creates the file named in argv[1].
EXITS_WHEN_TOLD = """
import pathlib, sys, time
go = pathlib.Path(sys.argv[1])
while not go.exists():
    time.sleep(0.02)
sys.exit(5)
"""

SEED_SCRIPT = """\
#!/bin/bash
"$PYTHON" -m logistik register -v \\
  --id $(uuidgen | cut -c 1-8) \\
  --address 10.60.1.125 \\
  --consul-agent=$CONSUL_AGENT \\
  --tags logistik \\
  --tags model=model \\
  --tags node=3 \\
  --tags hostname=mk2 \\
  --tags version=v1 \\
  --port 5052 \\
  $SERVICE_NAME -- \\
"$PYTHON" -m http.server \\
  --bind 127.0.0.1 \\
  $MODEL_PORT
"""


@dataclass
class Running:
    """A `logistik register` process and the file its stderr goes to."""

    process: subprocess.Popen[bytes]
    log: Path
    leads_group: bool = False

    def lines(self) -> list[str]:
        """Lines it logged so far."""
        return self.log.read_text().splitlines()

    def count(self, text: str) -> int:
        """How many logged lines contain `text`."""
        return sum(text in line for line in self.lines())

    def wait(self, timeout_s: float = 20.0) -> int:
        """Its exit code, once it exits."""
        return self.process.wait(timeout_s)


Start = Callable[..., Running]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start `logistik register` processes; any still running is killed after the test."""
    started: list[Running] = []

    def run(*args: str, env: dict[str, str] | None = None, **popen: Any) -> Running:
        log = tmp_path / f"register-{len(started)}.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(args, stderr=stderr, env=env, **popen)
        started.append(Running(process, log, bool(popen.get("start_new_session"))))
        return started[-1]

    yield run
    for running in started:
        if running.process.poll() is None:
            if running.leads_group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.process.pid, signal.SIGKILL)
            running.process.kill()  # its command gets SIGTERM from Linux (parent-death signal)
            running.process.wait(10)


def register_args(consul: ConsulTarget, name: str, *flags: str) -> list[str]:
    """The register command line up to NAME, with a short TTL."""
    return [*REGISTER, "-v", "--consul-agent", consul.url, "--ttl", "1", *flags, name]


def child(tmp_path: Path, code: int = 7) -> tuple[list[str], Path]:
    """The stand-in model's command line, and the file it records a signal in."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    record = tmp_path / "signal.txt"
    return [sys.executable, str(script), str(record), str(code)], record


def wait_passing(consul: ConsulTarget, name: str, service_id: str) -> dict[str, Any]:
    """Wait until the instance is listed by ?passing; its health entry."""
    found: list[dict[str, Any]] = []

    def listed() -> bool:
        found[:] = [e for e in consul.passing(name) if e["Service"]["ID"] == service_id]
        return bool(found)

    wait_until(listed, 20, f"{service_id} to pass its health check")
    return found[0]


def assert_deregistered(consul: ConsulTarget, name: str, service_id: str) -> None:
    """The agent, the catalog and health no longer list the instance."""
    assert service_id not in consul.service_ids()
    entries = consul.get(f"/v1/catalog/service/{name}").json()
    assert service_id not in {entry["ServiceID"] for entry in entries}
    assert f"service:{service_id}" not in consul.get("/v1/agent/checks").json()


def test_registers_and_heartbeats_past_the_ttl(consul: ConsulTarget, start: Start) -> None:
    name = consul.name("model")
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    flags = ["--id", f"{name}-a", "--address", "10.1.2.3", "--port", "5052"]
    flags += ["--tags", "logistik", "--tags", "model=model"]
    # A TTL of 2 s (heartbeats every 0.67 s): a loaded machine may delay one by a second.
    flags += ["--ttl", "2"]
    running = start(*register_args(consul, name, *flags), "--", *command)

    entry = wait_passing(consul, name, f"{name}-a")
    assert entry["Service"]["Tags"] == ["logistik", "model=model"]
    assert (entry["Service"]["Address"], entry["Service"]["Port"]) == ("10.1.2.3", 5052)
    check = consul.get("/v1/agent/checks").json()[f"service:{name}-a"]
    assert check["Type"] == "ttl"

    # Three TTLs without a change: a missed heartbeat would turn the check critical and
    # wake this blocking query early with a new index.
    index = consul.get(f"/v1/health/service/{name}?passing").index
    began = time.monotonic()
    held = consul.get(f"/v1/health/service/{name}?passing&index={index}&wait=6s")
    assert time.monotonic() - began >= 5.9
    assert held.index == index
    assert [e["Service"]["ID"] for e in held.json()] == [f"{name}-a"]
    assert running.process.poll() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_is_forwarded_then_deregistered(
    consul: ConsulTarget, start: Start, tmp_path: Path, signum: signal.Signals
) -> None:
    name = consul.name("signals")
    command, record = child(tmp_path, code=7)
    running = start(*register_args(consul, name), "--", *command)
    wait_passing(consul, name, name)
    wait_until(Path(f"{record}.ready").exists, 20, "the command to handle signals")

    running.process.send_signal(signum)

    assert running.wait() == 7
    assert record.read_text() == signum.name
    assert_deregistered(consul, name, name)


def test_child_killed_by_a_signal_gives_128_plus_it(consul: ConsulTarget, start: Start) -> None:
    name = consul.name("killed")
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    running = start(*register_args(consul, name), "--", *command)
    wait_passing(consul, name, name)

    running.process.send_signal(signal.SIGTERM)

    assert running.wait() == 128 + signal.SIGTERM
    assert_deregistered(consul, name, name)


def test_child_exiting_on_its_own_deregisters(
    consul: ConsulTarget, start: Start, tmp_path: Path
) -> None:
    name = consul.name("exits")
    script, go = tmp_path / "exits.py", tmp_path / "go"
    script.write_text(EXITS_WHEN_TOLD)
    running = start(*register_args(consul, name), "--", sys.executable, str(script), str(go))
    wait_passing(consul, name, name)

    go.write_text("exit now")

    assert running.wait() == 5
    assert_deregistered(consul, name, name)


def test_command_not_found_is_one_line_and_127(consul: ConsulTarget, tmp_path: Path) -> None:
    name = consul.name("missing")
    missing = str(tmp_path / "no-such-model")
    result = subprocess.run(
        [*REGISTER, "--consul-agent", consul.url, name, "--", missing, "--flag"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 127
    assert result.stderr.count("\n") == 1
    assert missing in result.stderr and "Traceback" not in result.stderr
    assert name not in consul.service_ids()


def test_bad_flag_is_a_usage_error() -> None:
    result = subprocess.run(
        [*REGISTER, "--bogus", "name", "--", "true"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "Usage:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--ttl", "soon", "name", "--", "true"],
        ["--ttl", "0", "name", "--", "true"],
        ["--ttl", "3", "--heartbeat", "3", "name", "--", "true"],
        ["--consul-agent", "host:port", "name", "--", "true"],
        ["--port", "70000", "name", "--", "true"],
        ["--address", "0.0.0.0", "name", "--", "true"],
        ["name"],
        ["name", "--"],
    ],
)
def test_flags_are_checked_before_anything_starts(args: list[str]) -> None:
    result = CliRunner().invoke(register, args)
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output


def test_consul_down_keeps_the_child_and_registers_when_back(
    consul: ConsulTarget, start: Start, tmp_path: Path
) -> None:
    double = consul.require_double()
    name = consul.name("outage")
    command, record = child(tmp_path, code=0)
    double.stop()
    running = start(*register_args(consul, name), "--", *command)
    ready = Path(f"{record}.ready")
    wait_until(ready.exists, 20, "the command to run while Consul is down")
    wait_until(lambda: running.count("cannot keep") == 1, 20, "the failure line")

    double.start()
    wait_passing(consul, name, name)
    wait_until(lambda: running.count("Consul answers again") == 1, 20, "the recovery line")

    double.stop()  # a second outage is a second burst: one more line, not one per attempt
    wait_until(lambda: running.count("cannot keep") == 2, 20, "the second failure line")
    double.start()
    wait_until(lambda: running.count("Consul answers again") == 2, 20, "the recovery")
    wait_passing(consul, name, name)
    assert running.count("cannot keep") == 2

    running.process.send_signal(signal.SIGTERM)
    assert running.wait() == 0
    assert_deregistered(consul, name, name)


def test_consul_that_forgot_the_service_gets_it_again(consul: ConsulTarget, start: Start) -> None:
    double = consul.require_double()
    name = consul.name("forgotten")
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    running = start(*register_args(consul, name), "--", *command)
    wait_passing(consul, name, name)

    double.wipe()

    wait_passing(consul, name, name)
    assert running.count("no longer knows") == 1
    assert running.process.poll() is None


def test_seed_start_a_model_script(consul: ConsulTarget, start: Start, tmp_path: Path) -> None:
    script = tmp_path / "start-model.sh"
    script.write_text(SEED_SCRIPT)
    script.chmod(0o755)
    name = "the_service_name" if consul.double else consul.name("the_service_name")
    model_port = free_port()
    env = {
        **os.environ,
        "PATH": f"{uuidgen_dir(tmp_path)}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "CONSUL_AGENT": consul.hostport,
        "SERVICE_NAME": name,
        "MODEL_PORT": str(model_port),
    }
    running = start("bash", str(script), env=env, start_new_session=True)

    wait_until(lambda: bool(consul.passing(name)), 20, "the start script's service to pass")
    [entry] = consul.passing(name)
    service_id = entry["Service"]["ID"]
    consul.track(service_id)
    assert len(service_id) == 8
    assert entry["Service"]["Tags"] == SEED_TAGS
    assert (entry["Service"]["Address"], entry["Service"]["Port"]) == ("10.60.1.125", 5052)
    assert consul.get("/v1/catalog/services").json()[name] == SEED_TAGS
    wait_until(lambda: port_answers(model_port), 20, "the model to serve")
    assert http("GET", f"http://127.0.0.1:{model_port}/").status == 200

    os.killpg(running.process.pid, signal.SIGTERM)  # as a service manager stops the script

    wait_until(lambda: service_id not in consul.service_ids(), 20, "the deregistration")
    wait_until(lambda: not port_answers(model_port), 20, "the model to stop")
    assert_deregistered(consul, name, service_id)


def uuidgen_dir(tmp_path: Path) -> Path:
    """A directory to put first on PATH so the start script finds `uuidgen` on any machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if shutil.which("uuidgen") is None:
        shim = bin_dir / "uuidgen"
        shim.write_text(f"#!{sys.executable}\nimport uuid\nprint(uuid.uuid4())\n")
        shim.chmod(0o755)
    return bin_dir


def port_answers(port: int) -> bool:
    """True when something accepts connections on the loopback port."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0

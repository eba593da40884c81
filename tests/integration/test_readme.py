"""The README's commands, run as a newcomer types them: the quick start, then `logistik init`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from logistik.kafka.embedded import free_port, port_is_free
from tests.support.kafkatools import unique
from tests.support.models import ModelServer, wait_until

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def sh_blocks(section: str) -> list[str]:
    """The ```sh blocks of one README section, in order."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end > 0 else None]
    return re.findall(r"```sh\n(.*?)```", body, re.S)


def shell(command: str, cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run README lines in bash, as written."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def free_ports(config: Path) -> dict[str, int]:
    """Give a copied config free ports (a newcomer's machine has 9092, 5151 and 5656 free;
    a test machine may not), and return them."""
    tree = yaml.safe_load(config.read_text())
    ports = {"broker": free_port(), "model": free_port(), "web": free_port()}
    tree["kafka"]["embedded_port"] = ports["broker"]
    tree["discovery"]["handlers"][0]["port"] = ports["model"]
    tree.setdefault("web", {})["port"] = ports["web"]
    config.write_text(yaml.safe_dump(tree))
    return ports


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    """A folder holding the repository's examples, as a clone would."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    yield tmp_path


def test_the_quick_start_answers_and_ctrl_c_stops_everything(checkout: Path) -> None:
    start, use = sh_blocks("Quick start: one model of your own")
    assert start.strip() == "python examples/quickstart.py"
    ports = free_ports(checkout / "examples" / "quickstart.yaml")
    log = checkout / "quickstart.log"
    with log.open("wb") as out:
        # Its own session: Ctrl-C goes to the whole group, as a terminal sends it.
        running = subprocess.Popen(
            ["bash", "-c", start],
            cwd=checkout,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_until(lambda: "consuming events" in log.read_text(), 60, "logistik to consume")
        result = shell(use, checkout)
        assert result.returncode == 0, result.stderr + log.read_text()
        assert '"answer": "tceted"' in result.stdout, result.stdout
        assert "sent 1 event(s) to events" in result.stderr
        assert "warning" not in result.stderr
        os.killpg(running.pid, signal.SIGINT)
        assert running.wait(60) == 0, log.read_text()
    finally:
        if running.poll() is None:
            os.killpg(running.pid, signal.SIGKILL)
    # Nothing of it is left listening: not the model, not the broker, not the web UI.
    for port in ports.values():
        assert port_is_free(port), f"port {port} still taken:\n{log.read_text()}"
    assert (checkout / "examples" / "logistik.db").exists()  # beside its config


def test_init_then_run_send_and_tail_on_your_kafka(
    servers: str, model_server: Callable[..., ModelServer], tmp_path: Path
) -> None:
    first, second = sh_blocks("Running it on your Kafka")
    model = model_server(path="/v1/predict")
    topic = unique("events")
    # Your broker and your model are the test's; every other word is the README's.
    init, run = first.strip().splitlines()
    init = (
        init.replace("kafka-1:9092", servers)
        .replace("http://10.0.0.5:5151", f"http://127.0.0.1:{model.port}")
        .replace("--topic events", f"--topic {topic}")
    )
    made = shell(init, tmp_path)
    assert made.returncode == 0, made.stderr
    assert "warning" not in made.stderr
    again = shell(init, tmp_path)
    assert again.returncode == 1
    assert again.stderr.startswith("logistik: logistik.yaml exists: not overwritten")
    config = tmp_path / "logistik.yaml"
    web_port = free_port()
    config.write_text(config.read_text().replace("port: 5656", f"port: {web_port}"))
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        router = subprocess.Popen(
            ["bash", "-c", run.split("#")[0]],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: f"consuming {topic}" in log.read_text(), 60, "logistik to consume")
        send, tail = (line.split("  #")[0] for line in second.strip().splitlines())
        sent = shell(send.replace("send events", f"send {topic}"), tmp_path)
        assert sent.returncode == 0, sent.stderr
        assert "warning" not in sent.stderr, sent.stderr
        followed = shell(
            tail.replace("events-results", f"{topic}-results") + " --from-beginning -n 1", tmp_path
        )
        assert '"verb": "detect"' in followed.stdout, followed.stderr + log.read_text()
        unread = shell(send.replace("send events", f"send {topic}-nobody"), tmp_path)
        assert unread.returncode == 0
        assert f"warning: the logistik at http://127.0.0.1:{web_port} routes no handler on " in (
            unread.stderr
        )
        os.killpg(router.pid, signal.SIGINT)
        assert router.wait(60) == 0, log.read_text()
    finally:
        if router.poll() is None:
            os.killpg(router.pid, signal.SIGKILL)
    assert (tmp_path / "logistik.db").exists()

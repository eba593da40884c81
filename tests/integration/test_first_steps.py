"""What a newcomer meets first: Ctrl-C while starting, a model that is not there, a wrong topic."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from logistik.kafka.embedded import free_port
from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import unique
from tests.support.models import ModelServer, wait_until

LOGISTIK = [sys.executable, "-m", "logistik"]


def test_ctrl_c_during_start_up_stops_at_once_in_one_line(tmp_path: Path) -> None:
    # A "database" that takes connections and never answers holds the start-up where it is.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(60)
        config = tmp_path / "logistik.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},
                    "database": {"url": f"postgresql://u@127.0.0.1:{silent.getsockname()[1]}/x"},
                    "web": {"port": free_port()},
                }
            )
        )
        run = subprocess.Popen(
            [*LOGISTIK, "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            connection, _ = silent.accept()  # logistik is opening its store: mid start-up
            with connection:
                run.send_signal(signal.SIGINT)
                _out, err = run.communicate(timeout=10)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 0
    assert err.splitlines()[-1] == "logistik: stopped during start-up"
    assert "Traceback" not in err


def test_an_unreachable_model_is_said_and_shown_and_a_reachable_one_is_not(
    servers: str,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = unique("reach")
    there = model_server()
    nobody = free_port()
    running = router(
        make_config(
            servers,
            [handler("there", topic, there.port), handler("absent", topic, nobody, hostname="h2")],
        )
    )
    web = f"http://127.0.0.1:{running.config.web.port}"

    def views() -> dict[str, Any]:
        with urllib.request.urlopen(f"{web}/api/handlers", timeout=10) as response:
            return {v["name"]: v for v in json.loads(response.read())}

    wait_until(lambda: all(v["reachable"] for v in views().values()), 30, "both models probed")
    found = views()
    assert found["there"]["reachable"]["ok"] is True
    assert found["there"]["reachable"]["detail"] == f"accepts connections at 127.0.0.1:{there.port}"
    assert found["absent"]["reachable"] == {
        **found["absent"]["reachable"],
        "ok": False,
        "detail": f"cannot connect to 127.0.0.1:{nobody}: Connection refused",
    }
    with urllib.request.urlopen(f"{web}/api/status", timeout=10) as response:
        assert json.loads(response.read())["unreachable"] == ["absent-h2-model-0"]
    assert there.requests == []  # probing is not a request: it counts in no model's figures
    warnings = [r.getMessage() for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert warnings == [
        f"model absent (absent-h2-model-0, now model) cannot be reached: cannot connect to "
        f"127.0.0.1:{nobody}: Connection refused; its events are retried, then go to "
        f"{topic}-failed"
    ]


def test_handlers_add_warns_when_the_model_cannot_be_reached(tmp_path: Path) -> None:
    config = tmp_path / "logistik.yaml"
    config.write_text(f"database: {{url: 'sqlite:///{tmp_path / 'store.db'}'}}\n")
    port = free_port()
    fields = ["name=m", "event=t", "endpoint=127.0.0.1", f"port={port}", "return_to=r"]
    added = subprocess.run(
        [*LOGISTIK, "handlers", "add", *fields, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0
    assert added.stdout == "added m-127.0.0.1-model-0\n"
    assert added.stderr == (
        f"logistik: warning: cannot connect to 127.0.0.1:{port}: Connection refused "
        "(is the model running?)\n"
    )


def test_send_to_a_topic_no_handler_of_the_config_reads_warns(servers: str, tmp_path: Path) -> None:
    config = tmp_path / "logistik.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": servers},
                "web": {"port": free_port()},  # no logistik answers there
                "discovery": {"handlers": [handler("m", "detect", 5151)]},
            }
        )
    )
    topic = unique("nobody")
    sent = subprocess.run(
        [*LOGISTIK, "send", topic, "--config", str(config)],
        input='{"verb": "detect"}\n',
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr.splitlines() == [
        f"sent 1 event(s) to {topic}",
        f"logistik: warning: no handler of {config} reads {topic}, and no logistik answered at "
        f"http://127.0.0.1:{yaml.safe_load(config.read_text())['web']['port']}; the events wait "
        "on the topic",
    ]

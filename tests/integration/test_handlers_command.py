"""`logistik handlers ...` as a user types it, against a real store file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def cli(tmp_path: Path) -> list[str]:
    """The command prefix with a config naming a fresh SQLite store."""
    config = tmp_path / "logistik.yaml"
    config.write_text(f"database: {{url: 'sqlite:///{tmp_path / 'store.db'}'}}\n")
    return [sys.executable, "-m", "logistik", "handlers", "--config", str(config)]


def run(cli: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run one handlers command."""
    return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60, check=False)


def test_add_list_promote_and_traffic(cli: list[str]) -> None:
    base = ["name=face", "event=detect", "port=5151", "return_to=face-results"]
    assert (
        run(cli, "add", *base, "endpoint=10.0.0.5", "version=1").stdout
        == "added face-10.0.0.5-model-0\n"
    )
    run(cli, "add", *base, "endpoint=10.0.0.6", "version=2", "model_type=canary")
    assert run(cli, "traffic", "face-10.0.0.6-canary-0", "0.25").returncode == 0
    listed = json.loads(run(cli, "list", "--json").stdout)
    assert [(h["node_id"], h["model_type"], h["traffic"]) for h in listed] == [
        ("face-10.0.0.5-model-0", "model", 0.0),
        ("face-10.0.0.6-canary-0", "canary", 0.25),
    ]
    promoted = run(cli, "promote", "face-10.0.0.6-canary-0")
    assert promoted.stdout.splitlines() == [
        "face-10.0.0.6-canary-0: now model",
        "face-10.0.0.5-model-0: now canary",
    ]
    table = run(cli, "list", "--type", "model").stdout
    assert "face-10.0.0.6-canary-0" in table and "face-10.0.0.5-model-0" not in table
    assert "version" in table.splitlines()[0]


def test_refusals_are_one_line_with_exit_code_1(cli: list[str]) -> None:
    run(cli, "add", "name=face", "event=detect", "endpoint=h", "port=1", "return_to=r")
    missing = run(cli, "show", "nope-h-model-0")
    assert (missing.returncode, missing.stderr) == (1, "logistik: no handler nope-h-model-0\n")
    demote = run(cli, "demote", "face-h-model-0")
    assert demote.returncode == 1
    assert demote.stderr == (
        "logistik: face-h-model-0 is the last active production instance "
        "of group face; promote another one first\n"
    )
    bad = run(cli, "add", "name=x", "port=http")
    assert bad.returncode == 1
    assert "logistik: handler: missing key 'event'" in bad.stderr.splitlines()
    assert "Traceback" not in bad.stderr


def test_disable_enable_retire_delete(cli: list[str]) -> None:
    run(cli, "add", "name=face", "event=detect", "endpoint=h", "port=1", "return_to=r")
    node = "face-h-model-0"
    run(cli, "disable", node)
    assert json.loads(run(cli, "show", node, "--json").stdout)["state"] == "disabled"
    run(cli, "enable", node)
    assert json.loads(run(cli, "show", node, "--json").stdout)["state"] == "active"
    run(cli, "retire", node)
    refused = run(cli, "enable", node)
    assert refused.returncode == 1 and "is retired" in refused.stderr
    assert run(cli, "delete", node, "--yes").stdout == f"deleted {node}\n"
    assert run(cli, "list").stderr.startswith("no handlers in /")


def test_config_after_the_subcommand_and_a_relative_store_path(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "logistik.yaml").write_text("database: {url: 'sqlite:///store.db'}\n")
    command = [sys.executable, "-m", "logistik", "handlers"]
    config = ["--config", "conf/logistik.yaml"]

    def here(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )

    missing = here("list", *config)
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"logistik: no handler store at {folder / 'store.db'} ")
    assert not (tmp_path / "store.db").exists() and not (folder / "store.db").exists()
    added = here("add", "name=face", "event=detect", "endpoint=h", "port=1", "return_to=r", *config)
    assert added.stdout == "added face-h-model-0\n", added.stderr
    # The store sits beside the config, whichever folder the command runs from.
    assert (folder / "store.db").exists()
    listed = subprocess.run(
        [*command, "list", "--config", "logistik.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=folder,
    )
    assert "face-h-model-0" in listed.stdout
    assert f"store: {folder / 'store.db'}" in listed.stdout

"""Secrets never reach a log line or a command's output, and store and config failures are one
line, on the failure paths a user meets: bad config, an unreachable database and webhook."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from logistik.kafka.embedded import free_port
from logistik.web.auth import hash_password
from logistik.web.auth.passwords import config_value
from tests.support.api_client import Client
from tests.support.databases import PostgresServer
from tests.support.harness import RouterProcess, handler, make_config
from tests.support.kafkatools import create_topics, event, produce, unique
from tests.support.models import wait_until

pytestmark = pytest.mark.one_broker  # the subject is the control plane, not the broker

StartProcess = Callable[[dict[str, Any]], RouterProcess]

TOKEN = "tok-leak-check-4f1c9e7a"
PASSWORD = "pw-leak-check-b3d2"
SESSION_SECRET = "session-leak-check-77aa"
OIDC_SECRET = "oidc-leak-check-5e5e"
WEBHOOK_PATH = "/hooks/T00/B00/webhook-leak-check-9x9x"
DB_PASSWORD = "db-leak-check-1q2w"
DB_QUERY_PASSWORD = "dbq-leak-check-3e4r"
REDIS_PASSWORD = "redis-leak-check-6y7u"
HASH = hash_password(PASSWORD, iterations=1000)
SECRETS = (
    TOKEN,
    PASSWORD,
    SESSION_SECRET,
    OIDC_SECRET,
    WEBHOOK_PATH,
    "webhook-leak-check",
    DB_PASSWORD,
    DB_QUERY_PASSWORD,
    REDIS_PASSWORD,
    HASH,
    HASH.split("$")[-1],
)


def logistik(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the logistik command and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "logistik", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def leaked(text: str) -> list[str]:
    """The secrets found in a text."""
    return [secret for secret in SECRETS if secret in text]


def secret_sections(port: int) -> dict[str, Any]:
    """Config sections holding every kind of secret."""
    return {
        "web": {
            "port": free_port(),
            "auth": {
                "tokens": [TOKEN],
                "users": {"alice": config_value(HASH)},
                "session_secret": SESSION_SECRET,
                "oidc": {
                    "issuer": f"http://127.0.0.1:{free_port()}",
                    "client_id": "logistik",
                    "client_secret": OIDC_SECRET,
                    "redirect_url": f"http://127.0.0.1:{port}/auth/callback",
                },
            },
        },
        "webhook": {"url": f"http://127.0.0.1:{free_port()}{WEBHOOK_PATH}", "interval_s": 0},
        "cache": {"url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"},
        "log_level": "debug",
    }


def test_config_type_errors_never_echo_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"web: {{auth: {{tokens: '{TOKEN}', users: ['{config_value(HASH)}'],"
        f" session_secret: ['{SESSION_SECRET}'],"
        f" oidc: {{issuer: 'https://i', client_id: c, client_secret: {{s: '{OIDC_SECRET}'}},"
        " redirect_url: 'https://l/cb'}}}\n"
        f"webhook: {{url: 'hooks.example.com{WEBHOOK_PATH}'}}\n"
        f"database: {{url: 'postgresql://u:{DB_PASSWORD}@h:port/db'}}\n"
    )
    result = logistik("run", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 6 and all(line.startswith(f"logistik: {path}: ") for line in lines)
    assert leaked(result.stdout + result.stderr) == []


def test_an_unreachable_database_at_start_is_one_line_without_its_password(
    tmp_path: Path, servers: str
) -> None:
    port = free_port()
    url = f"postgresql://logistik:{DB_PASSWORD}@127.0.0.1:{port}/db?password={DB_QUERY_PASSWORD}"
    config = make_config(servers, [], database={"url": url}, **secret_sections(port))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    started = logistik("run", "--config", str(path))
    assert started.returncode == 1
    assert (
        started.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"logistik: cannot open the store at postgresql://logistik:***@127.0.0.1:{port}/db"
        )
    )
    listed = logistik("handlers", "--config", str(path), "list")
    assert listed.returncode == 1
    assert listed.stderr.startswith("logistik: cannot open the store at ")
    assert len(listed.stderr.splitlines()) == 1
    assert leaked(started.stdout + started.stderr + listed.stdout + listed.stderr) == []


def test_no_secret_reaches_any_log_line_on_the_failure_paths(
    servers: str, own_postgres: PostgresServer, router_process: StartProcess
) -> None:
    topic = unique("leak")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    database = own_postgres.create_database().replace("postgres@", f"postgres:{DB_PASSWORD}@")
    sections = secret_sections(free_port())
    config = make_config(
        servers,
        [handler("m", topic, free_port())],  # a model that is not there: every call fails
        database={"url": f"{database}?password={DB_QUERY_PASSWORD}"},
        discovery={"refresh_s": 0.2},
        routing={"retries": 0},
        **sections,
    )
    running = router_process(config)
    api = Client(f"http://127.0.0.1:{config['web']['port']}")
    wait_until(lambda: "web UI and API on" in running.log(), what="the router up")
    produce(servers, topic, [event() for _ in range(3)])
    wait_until(lambda: "unreachable" in running.log(), what="the webhook reported unreachable")
    assert api.post("/auth/login", {"user": "alice", "password": "wrong"}).status == 401
    assert api.post("/auth/login", {"token": TOKEN[:-1]}).status == 401
    assert api.get("/auth/oidc/login").status >= 400  # the provider is not there
    own_postgres.pause()
    wait_until(lambda: "cannot reload handlers" in running.log(), what="the outage reported")
    own_postgres.resume()
    wait_until(lambda: "handler store reachable again" in running.log(), timeout_s=60)
    running.signal(signal.SIGTERM)
    assert running.wait(60) == 0
    log = running.log()
    assert " WARNING " in log and " ERROR " in log  # at log_level debug: every level was on
    assert leaked(log) == []


def test_store_failures_in_the_handlers_command_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "logistik.db"
    config = tmp_path / "config.yaml"
    config.write_text(f"database: {{url: 'sqlite:///{path}'}}\n")
    added = logistik(
        "handlers",
        "--config",
        str(config),
        "add",
        "name=m",
        "event=t",
        "endpoint=h",
        "port=1",
        "return_to=r",
        "path=[",
    )
    assert added.returncode == 1
    assert added.stderr.startswith("logistik: handler: path: must start with '/'")
    assert (
        logistik(
            "handlers",
            "--config",
            str(config),
            "add",
            "name=m",
            "event=t",
            "endpoint=h",
            "port=1",
            "return_to=r",
        ).returncode
        == 0
    )
    config.write_text(f"database: {{url: 'sqlite:///file:{path}?mode=ro&uri=true'}}\n")
    disabled = logistik("handlers", "--config", str(config), "disable", "m-h-model-0")
    assert disabled.returncode == 1
    assert disabled.stderr == (
        "logistik: the handler store cannot change handlers: attempt to write a readonly database\n"
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "the config file is empty"),
        ("database: {url: 'not a url'}", "database.url: not a database URL"),
        ("kafka: {bootstrap_servers: 'host:port'}", "kafka.bootstrap_servers: 'host:port' is not"),
    ],
)
def test_config_mistakes_stop_the_commands_with_one_line_and_exit_2(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    for command in (["run"], ["handlers", "list"]):
        where = ["--config", str(path)]
        args = [*command, *where] if command == ["run"] else ["handlers", *where, "list"]
        result = logistik(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"logistik: {path}: ")
        assert words in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_lone_canary_is_a_warning_at_start(servers: str, router_process: StartProcess) -> None:
    topic = unique("canary")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    config = make_config(servers, [handler("m", topic, free_port(), model_type="canary")])
    running = router_process(config)
    wait_until(lambda: "web UI and API on" in running.log(), what="the router up")
    assert "a canary without a production handler of group m in this file" in running.log()
    running.signal(signal.SIGTERM)
    assert running.wait(30) == 0

"""A newcomer's first config: 'did you mean', stores beside their config, `logistik init`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from logistik.answer import Answer, Outcome
from logistik.commands.init import model_address, starter_config
from logistik.config import load_config, parse_config, sqlite_path
from logistik.errors import ConfigError
from logistik.observe.figures import HandlerFigures


def problems(text: str) -> list[str]:
    """The lines of the ConfigError a config text raises."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "x.yaml", {})
    return str(caught.value).splitlines()


def test_an_unknown_key_names_the_closest_known_one_where_it_is() -> None:
    text = (
        "kafka: {bootstrap_server: b}\n"
        "rooting: {}\n"
        "web: {auth: {tokns: []}}\n"
        "discovery:\n  handlers:\n    - {name: a, event: e, endpoint: h, port: 1, "
        "retrun_to: r, timout: 2}\n"
        "nothing_like_it: 1\n"
    )
    assert sorted(problems(text)) == sorted(
        [
            "x.yaml: unknown key 'kafka.bootstrap_server' (did you mean 'bootstrap_servers'?)",
            "x.yaml: unknown key 'rooting' (did you mean 'routing'?)",
            "x.yaml: unknown key 'web.auth.tokns' (did you mean 'tokens'?)",
            "x.yaml: unknown key 'discovery.handlers[0].retrun_to' (did you mean 'return_to'?)",
            "x.yaml: unknown key 'discovery.handlers[0].timout' (did you mean 'timeout'?)",
            "x.yaml: unknown key 'nothing_like_it'",
        ]
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///store.db", "sqlite:///{folder}/store.db"),
        ("sqlite:///data/../store.db", "sqlite:///{folder}/store.db"),
        ("sqlite+aiosqlite:///store.db", "sqlite+aiosqlite:///{folder}/store.db"),
        ("sqlite:///store.db?timeout=5", "sqlite:///{folder}/store.db?timeout=5"),
        ("sqlite:///file:store.db?mode=ro&uri=true", "sqlite:///file:store.db?mode=ro&uri=true"),
        ("sqlite:////var/lib/logistik.db", "sqlite:////var/lib/logistik.db"),
        ("postgresql://u:p@db/logistik", "postgresql://u:p@db/logistik"),
    ],
)
def test_a_relative_sqlite_path_is_taken_from_the_config_files_folder(
    tmp_path: Path, given: str, expected: str
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "logistik.yaml").write_text(f"database: {{url: '{given}'}}\n")
    config = load_config(folder / "logistik.yaml", {})
    assert config.database.url == expected.format(folder=folder)


def test_the_default_store_sits_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "logistik.yaml").write_text("log_level: info\n")
    assert load_config(tmp_path / "logistik.yaml", {}).database.url == (
        f"sqlite:///{tmp_path}/logistik.db"
    )


def test_the_starter_config_is_valid_and_routes_the_model_named() -> None:
    text = starter_config("kafka-1:9092", "http://10.0.0.5:5151/v1/detect", "detect", "face")
    config = parse_config(text, "logistik.yaml", {})
    assert config.kafka.bootstrap_servers == "kafka-1:9092"
    (handler,) = config.discovery.handlers
    assert (handler.name, handler.event, handler.url, handler.return_to) == (
        "face",
        "detect",
        "http://10.0.0.5:5151/v1/detect",
        "detect-results",
    )
    assert config.web.auth.tokens == [""]  # until LK_API_TOKEN is set
    token = parse_config(text, "logistik.yaml", {"LK_API_TOKEN": "s3cret"}).web.auth.tokens
    assert token == ["s3cret"]
    assert "# " in text  # commented for people


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://h/x", "expected http://host:port/path"),
        ("http://h:port/x", "the port is not a number"),
        ("10.0.0.5:5151", "expected http://host:port/path"),
    ],
)
def test_a_wrong_model_url_is_said(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        model_address(url)


def test_calls_per_minute_of_a_new_model_count_from_its_first_call() -> None:
    now_s = 1_000_000.0
    figures = HandlerFigures("m", since=datetime.now(UTC) - timedelta(seconds=30))
    for second in range(30):
        figures.record(Answer(Outcome.OK, 200, latency_s=0.01), False, now_s - 30 + second)
    # 30 calls in the 30 s it was watched: 60 a minute, not 30 / 5 minutes.
    assert figures.per_minute(now_s) == pytest.approx(60.0, rel=0.05)
    series = figures.snapshot(now_s)["series"]
    assert series["5m"]["step_s"] == 10
    assert sum(p["calls"] for p in series["5m"]["points"]) == 30
    assert sum(p["calls"] for p in series["24h"]["points"]) == 30


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////var/lib/logistik.db?timeout=5", "/var/lib/logistik.db"),
        ("sqlite:///file:/var/lib/logistik.db?mode=ro&uri=true", "/var/lib/logistik.db"),
        ("sqlite+aiosqlite:///rel.db", "rel.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("sqlite:///file:x?mode=memory&uri=true", None),
        ("postgresql://u:p@h/db", None),
    ],
)
def test_the_file_of_a_sqlite_store(url: str, path: str | None) -> None:
    assert sqlite_path(url) == (None if path is None else Path(path))

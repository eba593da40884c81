"""Config mistakes: each is one line naming the file and the key, or a warning when running makes
sense; secrets are never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from logistik.config import load_config, masked_url, parse_config
from logistik.errors import ConfigError
from logistik.web.auth.passwords import config_value, hash_password, verify_password

HANDLER = "{name: a, event: t, endpoint: h, port: 1, return_to: r}"


def refused(text: str) -> str:
    """The one-line error a config text gets."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "x.yaml", {})
    message = str(caught.value)
    assert "\n" not in message and message.startswith("x.yaml: "), message
    return message


def test_an_empty_config_file_is_refused() -> None:
    assert "the config file is empty" in refused("")
    assert "the config file is empty" in refused("# only a comment\n")


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("kafka: {group_id: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 21); save the config file as UTF-8"


def test_two_static_handlers_with_one_node_id_are_refused() -> None:
    message = refused(f"discovery: {{handlers: [{HANDLER}, {HANDLER}]}}")
    assert message == (
        "x.yaml: discovery: handlers[1] (a): node id a-h-model-0 is also handlers[0]'s; "
        "give each instance its own node (or hostname)"
    )


def test_a_handler_returning_to_its_own_topic_is_refused() -> None:
    message = refused(
        "discovery: {handlers: [{name: a, event: t, endpoint: h, port: 1, return_to: t}]}"
    )
    assert "x.yaml: discovery: handlers[0] (a): return_to is the topic it handles (t)" in message


def test_a_template_webhook_needs_its_template() -> None:
    message = refused("webhook: {url: 'https://hooks.example.com/x', format: template}")
    assert message == (
        "x.yaml: webhook: format is template but no template is given (webhook.template)"
    )


def test_an_oidc_issuer_over_plain_http_is_refused_unless_on_loopback() -> None:
    oidc = "{issuer: %s, client_id: c, client_secret: s, redirect_url: 'https://l/auth/callback'}"
    message = refused(f"web: {{auth: {{oidc: {oidc % 'http://login.example.com'}}}}}")
    assert message.startswith("x.yaml: web.auth.oidc.issuer: must be an https:// URL")
    parse_config(f"web: {{auth: {{oidc: {oidc % 'http://127.0.0.1:8080'}}}}}", "x.yaml", {})


@pytest.mark.parametrize("servers", ["127.0.0.1:abc", "host:99999", "a b:1", "h:1,,h:2", "h:1/x"])
def test_a_malformed_bootstrap_string_names_the_key(servers: str) -> None:
    message = refused(f"kafka: {{bootstrap_servers: '{servers}'}}")
    assert message.startswith("x.yaml: kafka.bootstrap_servers: ")
    assert "is not host:port" in message


@pytest.mark.parametrize(
    "servers", ["127.0.0.1:9092", "k1:9092,k2:9093", "[::1]:9092", "kafka", "SSL://k:9093"]
)
def test_bootstrap_strings_kafka_takes_are_taken(servers: str) -> None:
    parse_config(f"kafka: {{bootstrap_servers: '{servers}'}}", "x.yaml", {})


@pytest.mark.parametrize(
    "url", ["postgresql://u:s3cr3t-pw@host:port/db", "mysql://u:s3cr3t-pw@h/db", "s3cr3t-pw"]
)
def test_a_malformed_database_url_is_refused_without_echoing_it(url: str) -> None:
    message = refused(f"database: {{url: '{url}'}}")
    assert message.startswith("x.yaml: database.url: not a database URL")
    assert "s3cr3t" not in message


def test_secrets_are_never_echoed_in_type_errors() -> None:
    text = (
        "web: {auth: {tokens: 'tok-s3cr3t-1', users: 'pbkdf2-s3cr3t', session_secret: [s3cr3t-ss],"
        " oidc: {issuer: 'https://i', client_id: c, client_secret: [s3cr3t-cs],"
        " redirect_url: 'https://l/cb'}}}\n"
        "webhook: {url: 'hooks.example.com/s3cr3t-path'}\n"
        "cache: {url: 'http://:s3cr3t-redis@h'}\n"
        "kafka: {consumer: {sasl.password: [s3cr3t-kafka]}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "x.yaml", {})
    lines = str(caught.value).splitlines()
    assert len(lines) == 7
    assert all(line.startswith("x.yaml: ") for line in lines)
    assert "s3cr3t" not in str(caught.value)


def test_a_value_too_long_is_echoed_short() -> None:
    message = refused(f"kafka: {{group_id: {'g' * 100_000}, partitions: '{'p' * 100_000}'}}")
    assert len(message) < 300


def test_a_canary_alone_in_its_group_is_a_warning_naming_the_file_and_key() -> None:
    canary = "{name: a, event: t, endpoint: h, port: 1, return_to: r, model_type: canary}"
    config = parse_config(f"discovery: {{handlers: [{canary}]}}", "x.yaml", {})
    assert config.warnings() == [
        "x.yaml: discovery.handlers[0] (a): a canary without a production handler of group a "
        "in this file answers every event of t, whatever its traffic share"
    ]
    with_production = parse_config(
        f"discovery: {{handlers: [{canary}, {{name: a, event: t, endpoint: h2, port: 1, "
        "return_to: r}]}",
        "x.yaml",
        {},
    )
    assert with_production.warnings() == []


def test_a_doubled_dollar_is_a_dollar_and_a_pasted_password_hash_logs_in() -> None:
    encoded = hash_password("correct horse", iterations=1000)
    pasted = config_value(encoded)
    config = parse_config(f"web: {{auth: {{users: {{alice: {pasted}}}}}}}\n", "x.yaml", {})
    assert config.web.auth.users["alice"] == encoded
    assert verify_password("correct horse", config.web.auth.users["alice"])
    quoted = parse_config(f'web: {{auth: {{users: {{alice: "{pasted}"}}}}}}\n', "x.yaml", {})
    assert quoted.web.auth.users["alice"] == encoded
    assert parse_config("kafka: {group_id: a$$b}", "x.yaml", {}).kafka.group_id == "a$b"


def test_secrets_of_urls_are_masked_in_messages() -> None:
    assert masked_url("postgresql://u:pw@h:5432/db?password=x&sslmode=require") == (
        "postgresql://u:***@h:5432/db?password=***&sslmode=require"
    )
    assert masked_url("postgresql://u:p/w@h/db") == "postgresql://u:***@h/db"
    assert masked_url("sqlite:////var/lib/logistik.db") == "sqlite:////var/lib/logistik.db"


def test_a_hash_pasted_without_doubled_dollars_is_refused_without_echoing_it() -> None:
    encoded = hash_password("correct horse", iterations=1000, salt="Salty")
    message = refused(f"web: {{auth: {{users: {{alice: '{encoded}'}}}}}}")
    assert message == (
        "x.yaml: web.auth.users.alice: a $NAME in the value names an environment variable "
        "that is not set (write $$ for a $)"
    )

"""Secrets never reach a log line: message, arguments, traceback, text or JSON."""

from __future__ import annotations

import io
import json
import logging

import pytest

from logistik.config import parse_config
from logistik.observe.logs import JsonFormatter, SecretMask

CONFIG = """
database: {url: "postgresql://app:db-pw-1234@db.example.com/logistik?sslpassword=ssl-pw-1234"}
web: {auth: {tokens: [token-secret-1], users: {alice: "pbkdf2_sha256$$1$$salt$$hash-secret"},
             session_secret: session-secret-1,
             oidc: {issuer: "https://login.example.com", client_id: c,
                    client_secret: oidc-secret-1, redirect_url: "https://l/auth/callback"}}}
webhook: {url: "https://hooks.example.com/services/T0/B0/hook-secret-1"}
cache: {url: "redis://:redis-pw-1234@cache.example.com:6379/0"}
kafka: {consumer: {sasl.password: kafka-pw-1234}, producer: {sasl.password: kafka-pw-1234}}
"""
SECRETS = (
    "db-pw-1234",
    "ssl-pw-1234",
    "token-secret-1",
    "hash-secret",
    "session-secret-1",
    "oidc-secret-1",
    "hook-secret-1",
    "redis-pw-1234",
    "kafka-pw-1234",
)


@pytest.mark.parametrize("json_lines", [False, True])
def test_every_configured_secret_is_masked_wherever_it_appears(json_lines: bool) -> None:
    config = parse_config(CONFIG, "x.yaml", {})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(message)s"))
    handler.addFilter(SecretMask(config.secrets()))
    logger = logging.getLogger("test.secrets")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.debug("connecting to %s", config.database.url)
        logger.info("token %s, user %s", "token-secret-1", config.web.auth.users)
        logger.warning("webhook %s unreachable", config.webhook.url)
        logger.error("cache at %s away", config.cache.url if config.cache else "")
        try:
            raise ValueError("bad session secret session-secret-1 and oidc-secret-1")
        except ValueError:
            logger.exception("failed")
        logger.critical("http://user:any-password@elsewhere/x")
        logger.info("librdkafka: %s", config.kafka.consumer)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert [secret for secret in SECRETS if secret in text] == []
    assert "any-password" not in text
    assert text.count("***") >= 9
    if json_lines:
        assert all(json.loads(line) for line in text.splitlines() if line.startswith("{"))

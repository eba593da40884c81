"""Who may read and change state: tokens, password sessions with CSRF, protected reads, secrets."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from logistik.web.auth import hash_password, verify_password
from tests.support.apache_kafka import Broker
from tests.support.api_client import (
    OTHER_TOKEN,
    PASSWORD,
    SECRETS,
    SESSION_SECRET,
    TOKEN,
    Client,
    quiet_config,
    refused,
)
from tests.support.harness import RouterThread, handler
from tests.support.kafkatools import unique

pytestmark = pytest.mark.one_broker  # the subject is the REST API's authentication, not the broker

AUTH = {
    "tokens": [TOKEN, OTHER_TOKEN],
    "session_secret": SESSION_SECRET,
    "users": {"alice": hash_password(PASSWORD, iterations=1000)},
}


@pytest.fixture(scope="module")
def running(broker: Broker) -> Iterator[RouterThread]:
    """A router whose API knows two tokens and one user."""
    started = RouterThread(quiet_config(broker.bootstrap_servers, AUTH)).start()
    yield started
    started.stop()


@pytest.fixture
def node(running: RouterThread) -> str:
    """A fresh handler, added with a token."""
    reply = Client.of(running, TOKEN).post("/api/handlers", handler(unique("m"), "t", 5151))
    assert reply.status == 201, reply.text
    return str(reply.json()["node_id"])


def login(running: RouterThread, **credentials: str) -> Client:
    """A browser-like client logged in with a password or token."""
    browser = Client.of(running)
    reply = browser.post("/auth/login", credentials)
    assert reply.status == 200, reply.text
    return browser


def test_password_hashes() -> None:
    encoded = hash_password("s3cret", iterations=1000, salt="pepper")
    assert encoded.startswith("pbkdf2_sha256$1000$pepper$")
    assert verify_password("s3cret", encoded)
    assert not verify_password("S3cret", encoded)
    assert hash_password("s3cret", iterations=1000) != hash_password("s3cret", iterations=1000)
    for broken in ("", "pbkdf2_sha256$x$salt$AAAA", "md5$1$salt$AAAA", encoded + "$"):
        assert not verify_password("s3cret", broken)


def test_a_session_writes_only_with_its_csrf_token(running: RouterThread, node: str) -> None:
    browser = Client.of(running)
    assert browser.get("/auth/session").json() == {
        "user": None,
        "csrf": "",
        "can_write": False,
        "read_protected": False,
        "oidc": False,
    }
    refused(browser.post("/auth/login", {"user": "alice", "password": "wrong"}), 401, "wrong")
    refused(browser.post("/auth/login", {"user": "bob", "password": PASSWORD}), 401)
    reply = browser.post("/auth/login", {"user": "alice", "password": PASSWORD})
    cookie = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    session = browser.get("/auth/session").json()
    assert session["user"] == "alice" and session["can_write"] is True
    csrf = session["csrf"]
    assert len(csrf) >= 32 and reply.json()["csrf"] == csrf
    refused(browser.post(f"/api/handlers/{node}/disable"), 403, "X-CSRF-Token")
    refused(browser.post(f"/api/handlers/{node}/disable", headers={"X-CSRF-Token": "forged"}), 403)
    assert browser.views()[node]["state"] == "active"
    done = browser.post(f"/api/handlers/{node}/disable", headers={"X-CSRF-Token": csrf})
    assert done.status == 200 and done.json()["state"] == "disabled"


def test_logout_ends_the_session_for_good(running: RouterThread, node: str) -> None:
    browser = login(running, user="alice", password=PASSWORD)
    csrf = browser.get("/auth/session").json()["csrf"]
    stolen = dict(browser.cookies)
    assert browser.post("/auth/logout").json()["user"] is None
    assert browser.get("/auth/session").json()["user"] is None
    refused(browser.post(f"/api/handlers/{node}/disable", headers={"X-CSRF-Token": csrf}), 401)
    replayed = Client(browser.base, cookies=stolen)
    assert replayed.get("/auth/session").json()["user"] is None
    refused(replayed.post(f"/api/handlers/{node}/disable", headers={"X-CSRF-Token": csrf}), 401)


def test_sessions_are_signed(running: RouterThread, node: str) -> None:
    browser = login(running, user="alice", password=PASSWORD)
    csrf = browser.get("/auth/session").json()["csrf"]
    value, path = browser.cookies["logistik_session"]
    body, _, signature = value.partition(".")
    forged = Client(browser.base, cookies={"logistik_session": (body + "x." + signature, path)})
    assert forged.get("/auth/session").json()["user"] is None
    refused(forged.post(f"/api/handlers/{node}/disable", headers={"X-CSRF-Token": csrf}), 401)


def test_an_api_token_logs_in_too(running: RouterThread, node: str) -> None:
    refused(Client.of(running).post("/auth/login", {"token": "nope"}), 401)
    browser = login(running, token=OTHER_TOKEN)
    session = browser.get("/auth/session").json()
    assert session["user"] == "token 2" and session["can_write"] is True
    reply = browser.post(f"/api/handlers/{node}/retire", headers={"X-CSRF-Token": session["csrf"]})
    assert reply.json()["state"] == "retired"
    assert Client.of(running, TOKEN).get("/auth/session").json()["user"] == "token 1"
    refused(Client.of(running).post("/auth/login", {"user": "alice"}), 422, "password")


def test_reads_are_open_by_default(running: RouterThread) -> None:
    anonymous = Client.of(running)
    for path in ("/api/status", "/api/handlers", "/api/hosts", "/api/failures", "/healthz"):
        assert anonymous.get(path).status == 200, path


def test_protected_reads_need_a_token_or_session(
    broker: Broker, router: Callable[[dict[str, Any]], RouterThread]
) -> None:
    running = router(quiet_config(broker.bootstrap_servers, {**AUTH, "read": "protected"}))
    anonymous = Client.of(running)
    for path in ("/api/status", "/api/handlers", "/api/handlers/x", "/api/hosts", "/api/failures"):
        refused(anonymous.get(path), 401, "web.auth.read")
        refused(Client.of(running, "wrong").get(path), 401, "invalid bearer token")
    assert Client.of(running, TOKEN).get("/api/handlers").json() == []
    assert login(running, user="alice", password=PASSWORD).get("/api/hosts").json() == []
    assert anonymous.get("/healthz").status == 200
    assert anonymous.get("/auth/session").json()["read_protected"] is True


def test_with_no_one_to_log_in_nothing_can_change(
    broker: Broker, router: Callable[[dict[str, Any]], RouterThread]
) -> None:
    running = router(quiet_config(broker.bootstrap_servers))
    anonymous = Client.of(running)
    hint = "web.auth.tokens"
    refused(anonymous.post("/api/handlers", handler("m", "t", 5151)), 403, hint)
    refused(Client.of(running, "any").post("/api/handlers/x/disable"), 403, hint)
    refused(anonymous.post("/api/query", {"node_id": "x", "event": {"verb": "v"}}), 403, hint)
    refused(anonymous.post("/auth/login", {"user": "alice", "password": "x"}), 403, hint)
    assert anonymous.get("/auth/session").json()["can_write"] is False
    assert anonymous.get("/api/handlers").json() == []


def test_secrets_never_appear(
    running: RouterThread, node: str, caplog: pytest.LogCaptureFixture
) -> None:
    anonymous, scripted = Client.of(running), Client.of(running, TOKEN)
    browser = login(running, user="alice", password=PASSWORD)
    answers = [
        anonymous.get("/api/status"),
        scripted.get("/api/status"),
        anonymous.get("/openapi.json"),
        anonymous.get("/docs"),
        anonymous.get("/auth/session"),
        browser.get("/auth/session"),
        scripted.get("/auth/session"),
        scripted.get("/api/handlers"),
        scripted.get("/api/hosts"),
        Client.of(running, TOKEN[:-1]).post(f"/api/handlers/{node}/disable"),
        anonymous.post("/auth/login", {"user": "alice", "password": PASSWORD + "!"}),
        anonymous.post("/auth/login", {"user": "alice", "password": SESSION_SECRET * 80}),
        anonymous.post("/auth/login", {"token": TOKEN + "x"}),
        anonymous.post("/auth/login", {"token": TOKEN, "extra": SESSION_SECRET}),
        anonymous.post("/auth/login", raw=f'{{"token": "{TOKEN}'.encode()),
        browser.post(f"/api/handlers/{node}/disable", headers={"X-CSRF-Token": TOKEN}),
        scripted.post("/api/query", {"node_id": node, "event": {"verb": "v"}}),
    ]
    for reply in answers:
        for secret in SECRETS:
            assert secret not in reply.text, (secret, reply.status, reply.text)
            assert secret not in str(reply.headers), (secret, reply.status)
    for secret in SECRETS:
        assert secret not in caplog.text


def test_docs_and_openapi_load_nothing_from_elsewhere(running: RouterThread) -> None:
    anonymous = Client.of(running)
    schema = anonymous.get("/openapi.json")
    paths = schema.json()["paths"]
    for path in (
        "/api/handlers",
        "/api/handlers/{node_id}/promote",
        "/api/query",
        "/api/hosts",
        "/auth/login",
        "/auth/session",
        "/auth/oidc/login",
        "/auth/callback",
    ):
        assert path in paths, path
    docs = anonymous.get("/docs")
    assert docs.status == 200 and docs.headers["Content-Type"].startswith("text/html")
    assert "PUT /api/handlers/{node_id}/traffic" in docs.text and "/openapi.json" in docs.text
    assert "default-src 'none'" in docs.headers["Content-Security-Policy"]
    for reply in (schema, docs):
        assert not re.search(r"(https?:)?//[a-z0-9]", reply.text, re.IGNORECASE), reply.text


def from_address(
    running: RouterThread,
    source: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    token: str | None = None,
) -> int:
    """Send a request from another loopback address (another client); returns the status."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", running.config.web.port, timeout=10, source_address=(source, 0)
    )
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, json.dumps(body) if body else None, headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_failed_logins_are_throttled_per_client_and_per_user_name_never_for_everyone(
    broker: Broker, router: Callable[[dict[str, Any]], RouterThread]
) -> None:
    users = {name: hash_password(PASSWORD, iterations=1000) for name in ("alice", "bob")}
    running = router(quiet_config(broker.bootstrap_servers, {**AUTH, "users": users}))

    def login_from(source: str, user: str, password: str) -> int:
        return from_address(
            running, source, "POST", "/auth/login", {"user": user, "password": password}
        )

    # One address guessing many names is stopped, the right password included ...
    for n in range(20):
        assert login_from("127.0.0.2", f"guess{n}", "wrong") == 401
    assert login_from("127.0.0.2", "bob", PASSWORD) == 429
    # ... while everyone else logs in.
    assert login_from("127.0.0.1", "bob", PASSWORD) == 200
    # Many addresses guessing one name stop that name only.
    for n in range(10):
        assert login_from(f"127.0.1.{n + 1}", "alice", "wrong") == 401
    refused_alice = Client.of(running).post("/auth/login", {"user": "alice", "password": PASSWORD})
    refused(refused_alice, 429, "too many failed attempts for this user name")
    assert refused_alice.headers["Retry-After"].isdigit()
    assert login_from("127.0.0.1", "bob", PASSWORD) == 200


def test_wrong_bearer_tokens_are_throttled_per_client(
    broker: Broker, router: Callable[[dict[str, Any]], RouterThread]
) -> None:
    running = router(quiet_config(broker.bootstrap_servers, AUTH))
    for n in range(20):
        assert from_address(running, "127.0.0.3", "GET", "/auth/session", token=f"guess{n}") == 401
    assert from_address(running, "127.0.0.3", "GET", "/auth/session", token=TOKEN) == 429
    assert from_address(running, "127.0.0.1", "GET", "/auth/session", token=TOKEN) == 200
    assert from_address(running, "127.0.0.3", "GET", "/auth/session") == 200  # no token: open

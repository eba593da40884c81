"""OpenID Connect login against a small provider double: code flow, PKCE, state, nonce, JWKS."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import HTTPException

from logistik.config import OidcConfig
from logistik.kafka.embedded import free_port
from logistik.web.auth import OidcLogin, Signer, verify_jws
from tests.support.apache_kafka import Broker
from tests.support.api_client import CLIENT_SECRET, SECRETS, Client, Reply, quiet_config, refused
from tests.support.harness import RouterThread
from tests.support.oidc_provider import OidcProvider, b64url

pytestmark = pytest.mark.one_broker  # the subject is OpenID Connect, not the broker

CLIENT_ID = "logistik-ui"
ALLOWED = ["alice@example.org", "u-42"]


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    """The OpenID provider double."""
    started = OidcProvider(CLIENT_ID, CLIENT_SECRET).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def running(broker: Broker, provider: OidcProvider) -> Iterator[RouterThread]:
    """A router whose UI logs in with the provider; only allowed users get in."""
    port = free_port()
    oidc = {
        "issuer": provider.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_url": f"http://127.0.0.1:{port}/auth/callback",
        "allowed_users": ALLOWED,
    }
    started = RouterThread(quiet_config(broker.bootstrap_servers, {"oidc": oidc}, port=port))
    yield started.start()
    started.stop()


@pytest.fixture(autouse=True)
def honest(provider: OidcProvider) -> Iterator[None]:
    """Each test starts with the provider logging alice in with valid tokens."""
    yield
    provider.user = {"sub": "u-1", "email": "alice@example.org", "email_verified": True}
    provider.tamper = lambda claims: claims
    provider.signing_key = provider.key


def log_in(browser: Client) -> Reply:
    """Go through the login: logistik, the provider, back to logistik's callback."""
    start = browser.get("/auth/oidc/login?next=/hosts")
    assert start.status == 302, start.text
    at_provider = Client("").get(start.location)
    assert at_provider.status == 302, at_provider.text
    return browser.get(at_provider.location)


def test_login_with_the_provider(running: RouterThread, provider: OidcProvider) -> None:
    browser = Client.of(running)
    assert browser.get("/auth/session").json()["oidc"] is True
    start = browser.get("/auth/oidc/login?next=/hosts")
    sent = {k: v[0] for k, v in parse_qs(urlsplit(start.location).query).items()}
    assert start.location.startswith(f"{provider.issuer}/authorize?")
    assert sent["response_type"] == "code" and sent["client_id"] == CLIENT_ID
    assert sent["code_challenge_method"] == "S256" and len(sent["code_challenge"]) == 43
    assert sent["redirect_uri"] == running.config.web.auth.oidc.redirect_url  # type: ignore[union-attr]
    assert sent["scope"] == "openid email profile" and sent["state"] and sent["nonce"]
    assert "SameSite=lax" in start.headers["Set-Cookie"]
    back = browser.get(Client("").get(start.location).location)
    assert back.status == 303 and back.location == "/hosts", back.text
    assert "code_verifier" in provider.token_requests[-1]
    session = browser.get("/auth/session").json()
    assert session["user"] == "alice@example.org" and session["can_write"] is True
    add = browser.post(
        "/api/handlers",
        {"name": "m", "event": "t", "endpoint": "127.0.0.1", "port": 5151, "return_to": "r"},
        headers={"X-CSRF-Token": session["csrf"]},
    )
    assert add.status == 201, add.text
    assert "logistik_oidc" not in browser.cookies
    for secret in SECRETS:
        assert secret not in start.text + back.text + str(start.headers) + str(back.headers)


def test_only_allowed_users_get_in(running: RouterThread, provider: OidcProvider) -> None:
    provider.user = {"sub": "u-9", "email": "mallory@example.org", "email_verified": True}
    refused(log_in(Client.of(running)), 403, "allowed_users")
    provider.user = {"sub": "u-42", "email": "bob@example.org", "email_verified": True}
    browser = Client.of(running)
    assert log_in(browser).status == 303
    assert browser.get("/auth/session").json()["user"] == "u-42"
    provider.user = {"sub": "u-7", "email": "alice@example.org", "email_verified": False}
    refused(log_in(Client.of(running)), 403, "allowed_users")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"nonce": "replayed"}, "nonce"),
        ({"aud": "another-client"}, "another client"),
        ({"iss": "http://127.0.0.1:1"}, "another issuer"),
        ({"exp": 1_000_000}, "expired"),
    ],
)
def test_a_bad_id_token_is_refused(
    running: RouterThread, provider: OidcProvider, change: dict[str, Any], words: str
) -> None:
    provider.tamper = lambda claims: {**claims, **change}
    browser = Client.of(running)
    refused(log_in(browser), 400, words)
    assert browser.get("/auth/session").json()["user"] is None


def test_an_id_token_signed_with_another_key_is_refused(
    running: RouterThread, provider: OidcProvider
) -> None:
    provider.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(log_in(Client.of(running)), 400, "signature")


def test_the_callback_needs_the_browser_that_started_the_login(running: RouterThread) -> None:
    victim, attacker = Client.of(running), Client.of(running)
    start = attacker.get("/auth/oidc/login")
    callback = Client("").get(start.location).location
    refused(victim.get(callback), 400, "no login in progress")
    assert victim.get("/auth/session").json()["user"] is None
    other = Client.of(running)
    other.get("/auth/oidc/login")
    refused(other.get(callback), 400, "state")
    refused(Client.of(running).get("/auth/callback?error=access_denied"), 403, "access_denied")


def test_next_stays_on_this_site(running: RouterThread) -> None:
    for target in ("//evil.example/", "https://evil.example/", "hosts"):
        browser = Client.of(running)
        start = browser.get(f"/auth/oidc/login?next={quote(target, safe='')}")
        assert browser.get(Client("").get(start.location).location).location == "/"


def test_without_oidc_its_routes_are_not_found(broker: Broker) -> None:
    running = RouterThread(quiet_config(broker.bootstrap_servers)).start()
    try:
        refused(Client.of(running).get("/auth/oidc/login"), 404, "web.auth.oidc")
        refused(Client.of(running).get("/auth/callback?code=x&state=y"), 404)
    finally:
        running.stop()


def _number(value: int, size: int) -> str:
    return b64url(value.to_bytes(size, "big"))


def test_signatures_of_every_supported_key_type() -> None:
    data = b"header.claims"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = rsa_key.public_key().public_numbers()
    rsa_jwk = {"kty": "RSA", "n": _number(public.n, 256), "e": _number(public.e, 3)}
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    assert verify_jws("PS256", rsa_jwk, data, rsa_key.sign(data, pss, hashes.SHA256()))
    rs256 = rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    assert verify_jws("RS256", rsa_jwk, data, rs256)
    assert not verify_jws("RS256", rsa_jwk, data + b"x", rs256)
    assert not verify_jws("RS384", rsa_jwk, data, rs256)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    point = ec_key.public_key().public_numbers()
    ec_jwk = {"kty": "EC", "crv": "P-256", "x": _number(point.x, 32), "y": _number(point.y, 32)}
    r, s = decode_dss_signature(ec_key.sign(data, ec.ECDSA(hashes.SHA256())))
    es256 = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert verify_jws("ES256", ec_jwk, data, es256)
    assert not verify_jws("ES256", ec_jwk, b"other", es256)
    assert not verify_jws("ES384", ec_jwk, data, es256)  # the curve must match the algorithm
    assert not verify_jws("RS256", ec_jwk, data, es256)  # and the key type
    ed_key = ed25519.Ed25519PrivateKey.generate()
    raw = ed_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ed_jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    assert verify_jws("EdDSA", ed_jwk, data, ed_key.sign(data))
    assert not verify_jws("EdDSA", ed_jwk, data, bytes(64))


def _jws(alg: str, claims: dict[str, Any], key: bytes) -> str:
    data = f"{b64url(orjson.dumps({'alg': alg}))}.{b64url(orjson.dumps(claims))}"
    signature = hmac.new(key, data.encode(), hashlib.sha256).digest() if key else b""
    return f"{data}.{b64url(signature)}"


def test_secret_signed_and_unsigned_id_tokens() -> None:
    config = OidcConfig(
        issuer="https://id.invalid",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_url="/auth/callback",
    )
    login = OidcLogin(config, Signer(""))

    def claims_of(token: str) -> dict[str, Any]:
        return asyncio.run(login._verified_claims({}, token))

    assert claims_of(_jws("HS256", {"sub": "u"}, CLIENT_SECRET.encode())) == {"sub": "u"}
    for token in (
        _jws("HS256", {"sub": "u"}, b"guessed"),
        _jws("none", {"sub": "u"}, b""),
        "not.a-token",
        "",
    ):
        with pytest.raises(HTTPException) as refusal:
            claims_of(token)
        assert refusal.value.status_code in (400, 502)

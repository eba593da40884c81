"""A tiny OpenID Connect provider for tests: discovery, authorize, token (PKCE), JWKS.

No real provider can run here, so this double stands in for one: it signs id_tokens with
its own RSA key, checks the client's secret and the PKCE verifier, and logs in whoever the
test names, without a login form.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from logistik.kafka.embedded import free_port

Claims = dict[str, Any]


def b64url(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_rs256(key: rsa.RSAPrivateKey, kid: str, claims: Claims) -> str:
    """A compact JWS of the claims, signed RS256."""
    header = b64url(orjson.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}))
    data = f"{header}.{b64url(orjson.dumps(claims))}".encode()
    signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return f"{data.decode()}.{b64url(signature)}"


class OidcProvider:
    """An OpenID provider on loopback, in its own thread."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "key-1"
        self.signing_key = self.key  # a test may sign with another key than the one published
        self.user: Claims = {"sub": "u-1", "email": "alice@example.org", "email_verified": True}
        self.tamper: Callable[[Claims], Claims] = lambda claims: claims
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self._codes: dict[str, dict[str, str]] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> OidcProvider:
        """Listen, and return when requests are taken."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("OIDC provider did not start")
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_get("/jwks", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    async def _discovery(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, _request: web.Request) -> web.Response:
        numbers = self.key.public_key().public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        key = {
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": "RS256",
            "n": b64url(n),
            "e": b64url(e),
        }
        return web.json_response({"keys": [key]})

    async def _authorize(self, request: web.Request) -> web.Response:
        """Log the test's user in at once and send the browser back with a code."""
        params = dict(request.query)
        self.authorize_requests.append(params)
        code = secrets.token_urlsafe(16)
        self._codes[code] = params
        back = urlencode({"code": code, "state": params.get("state", "")})
        raise web.HTTPFound(f"{params['redirect_uri']}?{back}")

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append(form)
        expected = (
            "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        )
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        params = self._codes.pop(form.get("code", ""), None)
        if params is None or form.get("redirect_uri") != params["redirect_uri"]:
            return web.json_response({"error": "invalid_grant"}, status=400)
        challenge = b64url(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
        if challenge != params["code_challenge"] or params["code_challenge_method"] != "S256":
            return web.json_response(
                {"error": "invalid_grant", "error_description": "PKCE"}, status=400
            )
        now = int(time.time())
        claims = self.tamper(
            {
                "iss": self.issuer,
                "aud": self.client_id,
                "iat": now,
                "exp": now + 300,
                "nonce": params["nonce"],
                **self.user,
            }
        )
        id_token = sign_rs256(self.signing_key, self.kid, claims)
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "id_token": id_token,
            }
        )

"""Logging in with an OpenID Connect provider: the authorization code flow and id_token checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import orjson
from fastapi import HTTPException, Request, Response

from logistik.config import OidcConfig
from logistik.errors import one_line
from logistik.web.auth.jws import JWS_ALGORITHMS, b64url, split_jwt, verify_jws
from logistik.web.auth.sessions import Signer

logger = logging.getLogger(__name__)

OIDC_COOKIE = "logistik_oidc"
OIDC_LOGIN_MAX_AGE_S = 600  # from the redirect to the provider until the callback
OIDC_HTTP_TIMEOUT_S = 10.0
OIDC_METADATA_TTL_S = 3600.0
CLOCK_SKEW_S = 120
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PROVIDER_TEXT_MAX_CHARS = 200  # of what a provider says, echoed in a refusal


def secure_url(url: str) -> bool:
    """Whether a provider URL is https, or http on loopback (a provider on this machine)."""
    parsed = urlsplit(url)
    return parsed.scheme == "https" or (parsed.scheme == "http" and parsed.hostname in LOOPBACK)


def safe_next(path: str) -> str:
    """A local path to return to after login; anything else (another site) becomes `/`."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path or "://" in path:
        return "/"
    return path


def check_claims(
    claims: dict[str, Any], issuer: str, client_id: str, nonce: str, now: float
) -> None:
    """Check an id_token's iss, aud, azp, exp, iat and nonce; ValueError saying what is wrong."""
    if str(claims.get("iss", "")).rstrip("/") != issuer.rstrip("/"):
        raise ValueError("the id_token is from another issuer")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        raise ValueError("the id_token is meant for another client")
    if len(audiences) > 1 and claims.get("azp", client_id) != client_id:
        raise ValueError("the id_token was issued to another client (azp)")
    expires, issued = claims.get("exp"), claims.get("iat", now)
    if not isinstance(expires, int | float) or expires < now - CLOCK_SKEW_S:
        raise ValueError("the id_token has expired")
    if not isinstance(issued, int | float) or issued > now + CLOCK_SKEW_S:
        raise ValueError("the id_token is issued in the future")
    given = claims.get("nonce")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), nonce.encode()):
        raise ValueError("the id_token's nonce does not match this login")
    if not claims.get("sub"):
        raise ValueError("the id_token names no subject")


def oidc_user(claims: dict[str, Any], allowed: list[str]) -> str | None:
    """The user an id_token names (verified email, else subject), None when not allowed."""
    names = [str(claims["sub"])]
    email = claims.get("email")
    if isinstance(email, str) and email and claims.get("email_verified") is not False:
        names.insert(0, email)
    if not allowed:
        return names[0]
    return next((name for name in names if name in allowed), None)


class OidcLogin:
    """The OpenID Connect authorization code flow, with state, nonce and PKCE (S256)."""

    def __init__(self, config: OidcConfig, signer: Signer) -> None:
        self.config = config
        self.signer = signer
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: list[dict[str, Any]] = []

    async def start(self, next_path: str) -> tuple[str, str]:
        """The provider's authorization URL, and the signed cookie binding it to this browser."""
        meta = await self.metadata()
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.config.redirect_url,
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge_method": "S256",
            "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()),
        }
        endpoint = str(meta["authorization_endpoint"])
        url = f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"
        payload = {"s": state, "n": nonce, "v": verifier, "r": safe_next(next_path)}
        return url, self.signer.sign("oidc", payload, OIDC_LOGIN_MAX_AGE_S)

    def set_pending(self, response: Response, request: Request, value: str) -> None:
        """The cookie that holds a login in progress (Lax: it must come back from the provider)."""
        response.set_cookie(
            OIDC_COOKIE,
            value,
            max_age=OIDC_LOGIN_MAX_AGE_S,
            path="/auth/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )

    async def finish(self, params: Mapping[str, str], cookie: str | None) -> tuple[str, str]:
        """The user of a completed login and the local path to go to; HTTP errors otherwise."""
        if "error" in params:
            refusal = one_line(
                f"{params['error']}: {params.get('error_description', '')}", PROVIDER_TEXT_MAX_CHARS
            )
            raise HTTPException(403, f"the OpenID provider refused the login ({refusal})")
        pending = self.signer.unsign("oidc", cookie) if cookie else None
        if pending is None:
            raise HTTPException(
                400,
                "no login in progress in this browser (or it expired): "
                "start again at /auth/oidc/login",
            )
        state, code = params.get("state", ""), params.get("code", "")
        if not hmac.compare_digest(state.encode(), str(pending["s"]).encode()) or not code:
            raise HTTPException(400, "the login's state does not match: start again")
        meta = await self.metadata()
        tokens = await self._exchange(meta, code, str(pending["v"]))
        claims = await self._verified_claims(meta, tokens.get("id_token"))
        try:
            check_claims(
                claims, self.config.issuer, self.config.client_id, str(pending["n"]), time.time()
            )
        except ValueError as exc:
            raise HTTPException(400, f"login refused: {exc}") from None
        user = oidc_user(claims, self.config.allowed_users)
        if user is None:
            logger.warning("web: OpenID login of %r refused: not in allowed_users", claims["sub"])
            raise HTTPException(403, "this account is not in web.auth.oidc.allowed_users")
        return user, str(pending["r"])

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document, cached for an hour."""
        if (
            self._metadata is not None
            and time.monotonic() - self._metadata_at < OIDC_METADATA_TTL_S
        ):
            return self._metadata
        if not secure_url(self.config.issuer):
            raise HTTPException(503, "web.auth.oidc.issuer must be an https URL")
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        meta = await self._fetch("GET", url)
        needed = ("authorization_endpoint", "token_endpoint", "jwks_uri")
        if str(meta.get("issuer", "")).rstrip("/") != self.config.issuer.rstrip("/"):
            raise HTTPException(502, "the OpenID provider's discovery names another issuer")
        if not all(isinstance(meta.get(k), str) and secure_url(meta[k]) for k in needed):
            raise HTTPException(502, "the OpenID provider's discovery lacks https endpoints")
        self._metadata, self._metadata_at = meta, time.monotonic()
        return meta

    async def _exchange(self, meta: dict[str, Any], code: str, verifier: str) -> dict[str, Any]:
        """Trade the code for tokens at the token endpoint, authenticating this client."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": self.config.redirect_url,
        }
        headers = {"Accept": "application/json"}
        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        secret = self.config.client_secret
        if secret and "client_secret_basic" in methods:  # RFC 6749 2.3.1: each part form-encoded
            pair = f"{quote(self.config.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.config.client_id
            if secret:
                form["client_secret"] = secret
        return await self._fetch("POST", str(meta["token_endpoint"]), form, headers)

    async def _verified_claims(self, meta: dict[str, Any], id_token: Any) -> dict[str, Any]:
        """The claims of an id_token whose signature verifies with the provider's keys."""
        try:
            header, claims, data, signature = split_jwt(str(id_token or ""))
        except ValueError:
            raise HTTPException(502, "the OpenID provider sent no valid id_token") from None
        alg = str(header.get("alg"))
        if alg not in JWS_ALGORITHMS:
            raise HTTPException(400, f"login refused: id_token signed with {alg[:20]!r}")
        if alg.startswith("HS"):
            key = self.config.client_secret.encode()
            expected = hmac.new(key, data, f"sha{alg[2:]}").digest()
            valid = bool(key) and hmac.compare_digest(expected, signature)
        else:
            valid = await self._verify_with_keys(
                meta, alg, str(header.get("kid", "")), data, signature
            )
        if not valid:
            raise HTTPException(400, "login refused: the id_token's signature does not verify")
        return claims

    async def _verify_with_keys(
        self, meta: dict[str, Any], alg: str, kid: str, data: bytes, signature: bytes
    ) -> bool:
        """Verify with the provider's JWKS, reloading it once for a key id not seen yet."""
        if not self._keys or (kid and all(k.get("kid") != kid for k in self._keys)):
            keys = (await self._fetch("GET", str(meta["jwks_uri"]))).get("keys")
            self._keys = [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []
        candidates = [
            k
            for k in self._keys
            if (not kid or k.get("kid") == kid) and k.get("use", "sig") == "sig"
        ]
        return any(verify_jws(alg, key, data, signature) for key in candidates)

    async def _fetch(
        self,
        method: str,
        url: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A JSON object from the provider; 502 with one line when it cannot be had."""
        timeout = aiohttp.ClientTimeout(total=OIDC_HTTP_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(
                    method,
                    url,
                    data=form,
                    allow_redirects=False,
                    headers=headers or {"Accept": "application/json"},
                ) as response,
            ):
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HTTPException(
                502, f"cannot reach the OpenID provider: {type(exc).__name__}"
            ) from None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if status != 200 or not isinstance(document, dict):
            said = document.get("error", "") if isinstance(document, dict) else ""
            raise HTTPException(
                502,
                f"the OpenID provider answered HTTP {status} "
                f"{one_line(str(said), PROVIDER_TEXT_MAX_CHARS)}".rstrip(),
            )
        return document

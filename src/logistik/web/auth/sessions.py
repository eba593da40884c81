"""API tokens, signed UI sessions with CSRF tokens, and password and token logins."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from math import ceil
from typing import Any

import orjson
from fastapi import HTTPException, Request, Response

from logistik.config import WebAuthConfig
from logistik.web.auth.jws import b64url, b64url_decode
from logistik.web.auth.passwords import PBKDF2_ITERATIONS, PBKDF2_PREFIX, verify_password

logger = logging.getLogger(__name__)

SESSION_COOKIE = "logistik_session"
CSRF_HEADER = "X-CSRF-Token"
NO_WRITERS = (
    "state changes are disabled: no one can log in; configure web.auth.tokens (API tokens), "
    "web.auth.users (name: pbkdf2_sha256 password hash) or web.auth.oidc"
)
CLIENT_FAILURES_PER_MINUTE = 20  # wrong passwords, tokens or bearer tokens from one address
USER_FAILURES_PER_MINUTE = 10  # wrong passwords for one user name, from anywhere
THROTTLE_WINDOW_S = 60.0
THROTTLE_KEYS_MAX = 10_000  # addresses and names remembered at most (an attack may vary them)


class Signer:
    """Signs small JSON payloads with HMAC-SHA256; each payload names its purpose and expiry."""

    def __init__(self, secret: str) -> None:
        raw = secret.encode() if secret else secrets.token_bytes(32)
        self._key = hmac.new(raw, b"logistik session key v1", hashlib.sha256).digest()

    def mac(self, data: bytes) -> bytes:
        """The HMAC of some bytes under this signer's key."""
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def sign(self, purpose: str, payload: dict[str, Any], max_age_s: float) -> str:
        """The signed text of a payload valid for `max_age_s` seconds."""
        body = b64url(orjson.dumps({**payload, "p": purpose, "x": time.time() + max_age_s}))
        return f"{body}.{b64url(self.mac(body.encode()))}"

    def unsign(self, purpose: str, value: str) -> dict[str, Any] | None:
        """The payload of a signed text, or None when forged, expired or for another purpose."""
        body, _, signature = value.partition(".")
        try:
            given = b64url_decode(signature)
            payload = orjson.loads(b64url_decode(body)) if body else None
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not hmac.compare_digest(given, self.mac(body.encode())):
            return None
        if not isinstance(payload, dict) or payload.get("p") != purpose:
            return None
        expires = payload.get("x")
        if not isinstance(expires, int | float) or expires < time.time():
            return None
        return payload


class FailureCounter:
    """Failed attempts per key (an address, a user name) in a sliding window, bounded in memory."""

    def __init__(self, limit: int, window_s: float = THROTTLE_WINDOW_S) -> None:
        self._limit = limit
        self._window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def wait_s(self, key: str, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        recent = self._failures.get(key)
        if recent is None or len(recent) < self._limit:
            return 0.0
        return max(0.0, recent[0] + self._window_s - now)

    def add(self, key: str, now: float) -> None:
        """Count one failure of `key`."""
        recent = self._failures.pop(key, None) or deque(maxlen=self._limit)
        recent.append(now)
        self._failures[key] = recent  # last in the dict: the most recently failing
        if len(self._failures) > THROTTLE_KEYS_MAX:
            for old in list(self._failures)[: len(self._failures) // 10]:
                del self._failures[old]


def client_of(request: Request) -> str:
    """The address a request comes from (as the server sees it)."""
    return request.client.host if request.client is not None else ""


@dataclass(frozen=True)
class Identity:
    """Who sent a request: a user name, how they logged in, and the CSRF token of a session."""

    user: str
    kind: str  # "bearer" (a token in the header), "password", "token" or "oidc" (sessions)
    csrf: str = ""
    session_id: str = ""
    fingerprint: str = ""  # of the API token a "token" session logged in with

    @property
    def via_session(self) -> bool:
        """Whether the identity comes from the session cookie."""
        return self.kind != "bearer"


class Auth:
    """Checks requests against `web.auth`: tokens, sessions, CSRF, password logins."""

    def __init__(self, config: WebAuthConfig) -> None:
        self.config = config
        self.signer = Signer(config.session_secret)
        self._tokens = [token.encode() for token in config.tokens if token]
        self._fingerprints = {self._fingerprint(t) for t in self._tokens}
        self._revoked: dict[str, float] = {}  # session id -> when it would have expired
        self._clients = FailureCounter(CLIENT_FAILURES_PER_MINUTE)
        self._users = FailureCounter(USER_FAILURES_PER_MINUTE)
        rounds = PBKDF2_ITERATIONS
        for name, encoded in config.users.items():
            parts = encoded.split("$")
            if len(parts) != 4 or parts[0] != PBKDF2_PREFIX or not parts[1].isdigit():
                logger.error("web.auth.users.%s: not a pbkdf2_sha256 hash; it cannot log in", name)
            else:
                rounds = int(parts[1])
        # Checked for unknown users, so that they take as long as known ones.
        self._decoy_hash = f"{PBKDF2_PREFIX}${rounds}$decoy$AAAA"

    @property
    def writable(self) -> bool:
        """Whether anyone at all can authenticate to change state."""
        return bool(self._tokens or self.config.users or self.config.oidc)

    @property
    def read_protected(self) -> bool:
        """Whether reading the API needs authentication."""
        return self.config.read == "protected"

    def _fingerprint(self, token: bytes) -> str:
        return b64url(self.signer.mac(b"token:" + token)[:12])

    def token_user(self, token: str) -> str | None:
        """The name of a valid API token (`token 1`, `token 2`, ...), None when it is not one."""
        given = token.encode()
        found: str | None = None
        for index, expected in enumerate(self._tokens):
            if hmac.compare_digest(given, expected):
                found = f"token {index + 1}"
        return found

    def bearer(self, request: Request) -> Identity | None:
        """The identity of an `Authorization: Bearer` header; 401 when its token is wrong.

        Wrong tokens count against the client's address like wrong passwords: after too many
        in a minute its tokens are not even checked (429) until the minute has passed.
        """
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        client = client_of(request)
        self._throttle(client, None)
        user = self.token_user(token.strip())
        if user is None:
            self._clients.add(client, time.monotonic())
            raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
        return Identity(user, "bearer")

    def session(self, request: Request) -> Identity | None:
        """The identity of a valid session cookie, None when there is none."""
        value = request.cookies.get(SESSION_COOKIE)
        payload = self.signer.unsign("session", value) if value else None
        if payload is None:
            return None
        identity = Identity(
            str(payload.get("u", "")),
            str(payload.get("k", "")),
            str(payload.get("c", "")),
            str(payload.get("i", "")),
            str(payload.get("f", "")),
        )
        if identity.session_id in self._revoked or not self._still_allowed(identity):
            return None
        return identity

    def _still_allowed(self, identity: Identity) -> bool:
        """Whether what a session logged in with is still configured."""
        if identity.kind == "password":
            return identity.user in self.config.users
        if identity.kind == "token":
            return identity.fingerprint in self._fingerprints
        if identity.kind == "oidc":
            oidc = self.config.oidc
            return oidc is not None and (
                not oidc.allowed_users or identity.user in oidc.allowed_users
            )
        return False

    def identify(self, request: Request) -> Identity | None:
        """Who sent the request: a bearer token first, else the session cookie."""
        return self.bearer(request) or self.session(request)

    async def require_read(self, request: Request) -> Identity | None:
        """Let a read through; with `read: protected` only an authenticated one."""
        if not self.read_protected:
            return None
        identity = self.identify(request)
        if identity is None:
            raise HTTPException(
                401,
                "reading needs authentication (web.auth.read is protected): "
                "log in, or send Authorization: Bearer <token>",
            )
        return identity

    async def require_write(self, request: Request) -> Identity:
        """Let a state change through only with a token, or a session and its CSRF token."""
        if not self.writable:
            raise HTTPException(403, NO_WRITERS)
        identity = self.identify(request)
        if identity is None:
            raise HTTPException(
                401, "authentication required: log in, or send Authorization: Bearer <token>"
            )
        if identity.via_session:
            given = request.headers.get(CSRF_HEADER, "")
            if not given or not hmac.compare_digest(given.encode(), identity.csrf.encode()):
                raise HTTPException(
                    403, f"missing or wrong {CSRF_HEADER} header (take it from GET /auth/session)"
                )
        return identity

    def view(self, identity: Identity | None) -> dict[str, Any]:
        """What GET /auth/session answers."""
        return {
            "user": identity.user if identity else None,
            "csrf": identity.csrf if identity else "",
            "can_write": identity is not None and self.writable,
            "read_protected": self.read_protected,
            "oidc": self.config.oidc is not None,
        }

    async def login(
        self, user: str | None, password: str | None, token: str | None, client: str = ""
    ) -> Identity:
        """A new session identity for a user and password, or an API token; 401 when wrong.

        Failures are counted per client address and per user name, so an attack on one name
        or from one address locks out neither other users nor other clients.
        """
        if not self.writable:
            raise HTTPException(403, NO_WRITERS)
        name = None if user is None else user[:256]
        self._throttle(client, name if token is None else None)
        if token is not None:
            name = self.token_user(token)
            if name is not None:
                return self.new_identity(name, "token", self._fingerprint(token.encode()))
        elif user is not None and password is not None:
            encoded = self.config.users.get(user)
            checked = encoded if encoded is not None else self._decoy_hash
            if await asyncio.to_thread(verify_password, password, checked) and encoded:
                return self.new_identity(user, "password")
        now = time.monotonic()
        self._clients.add(client, now)
        if name is not None and token is None:
            self._users.add(name, now)
        logger.warning(
            "web: failed login%s", f" for user {user!r:.80}" if user else " with a token"
        )
        raise HTTPException(401, "wrong user name, password or token")

    def _throttle(self, client: str, user: str | None) -> None:
        """Refuse, unchecked, a client or user name with too many failures in the last minute."""
        now = time.monotonic()
        by_client = self._clients.wait_s(client, now)
        by_user = self._users.wait_s(user, now) if user is not None else 0.0
        if by_client or by_user:
            whom = "from this address" if by_client else "for this user name"
            raise HTTPException(
                429,
                f"too many failed attempts {whom}; try again in {ceil(max(by_client, by_user))} s",
                headers={"Retry-After": str(ceil(max(by_client, by_user)))},
            )

    def new_identity(self, user: str, kind: str, fingerprint: str = "") -> Identity:
        """A fresh session identity with its own id and CSRF token."""
        return Identity(
            user, kind, secrets.token_urlsafe(32), secrets.token_urlsafe(16), fingerprint
        )

    def set_session(self, response: Response, request: Request, identity: Identity) -> None:
        """Give the browser a signed, HttpOnly, SameSite=Strict session cookie."""
        max_age = self.config.session_max_age_s
        value = self.signer.sign(
            "session",
            {
                "u": identity.user,
                "k": identity.kind,
                "c": identity.csrf,
                "i": identity.session_id,
                "f": identity.fingerprint,
            },
            max_age,
        )
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def logout(self, request: Request, response: Response) -> None:
        """End the request's session for good and clear its cookie."""
        identity = self.session(request)
        now = time.time()
        self._revoked = {sid: until for sid, until in self._revoked.items() if until > now}
        if identity is not None:
            self._revoked[identity.session_id] = now + self.config.session_max_age_s
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")

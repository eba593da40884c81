"""Who may read and change state: API tokens, signed UI sessions with CSRF tokens, passwords.

Reading is open unless `web.auth.read` is `protected`; every state change needs either
`Authorization: Bearer <token>` or a session cookie together with its `X-CSRF-Token` header.
With no token, user or OpenID provider configured, state changes are refused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import orjson
from fastapi import HTTPException, Request, Response

from logistik.config import OidcConfig, WebAuthConfig

logger = logging.getLogger(__name__)

SESSION_COOKIE = "logistik_session"
CSRF_HEADER = "X-CSRF-Token"
PBKDF2_PREFIX = "pbkdf2_sha256"
PBKDF2_ITERATIONS = 600_000
NO_WRITERS = (
    "state changes are disabled: no one can log in; configure web.auth.tokens (API tokens), "
    "web.auth.users (name: pbkdf2_sha256 password hash) or web.auth.oidc"
)
LOGIN_FAILURES_PER_MINUTE = 20


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS, salt: str = "") -> str:
    """A `pbkdf2_sha256$<iterations>$<salt>$<hash-b64>` hash for `web.auth.users`."""
    salt = salt or secrets.token_urlsafe(16)
    if "$" in salt:
        raise ValueError("the salt may not contain '$'")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{PBKDF2_PREFIX}${iterations}${salt}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether a password matches a hash made by `hash_password`; a malformed hash never does."""
    try:
        prefix, iterations, salt, expected = encoded.split("$")
        rounds = int(iterations)
        wanted = base64.b64decode(expected, validate=True)
    except ValueError:
        return False
    if prefix != PBKDF2_PREFIX or rounds < 1:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), rounds)
    return hmac.compare_digest(digest, wanted)


def b64url(data: bytes) -> str:
    """Unpadded base64url text."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url text; ValueError when it is not."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc


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
        self._failures: deque[float] = deque(maxlen=LOGIN_FAILURES_PER_MINUTE)
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
        """The identity of an `Authorization: Bearer` header; 401 when its token is wrong."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        user = self.token_user(token.strip())
        if user is None:
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

    async def login(self, user: str | None, password: str | None, token: str | None) -> Identity:
        """A new session identity for a user and password, or an API token; 401 when wrong."""
        if not self.writable:
            raise HTTPException(403, NO_WRITERS)
        self._throttle()
        if token is not None:
            name = self.token_user(token)
            if name is not None:
                return self.new_identity(name, "token", self._fingerprint(token.encode()))
        elif user is not None and password is not None:
            encoded = self.config.users.get(user)
            checked = encoded if encoded is not None else self._decoy_hash
            if await asyncio.to_thread(verify_password, password, checked) and encoded:
                return self.new_identity(user, "password")
        self._failures.append(time.monotonic())
        logger.warning(
            "web: failed login%s", f" for user {user!r:.80}" if user else " with a token"
        )
        raise HTTPException(401, "wrong user name, password or token")

    def _throttle(self) -> None:
        """Refuse logins for a while after many failures in a minute."""
        recent = [t for t in self._failures if t > time.monotonic() - 60]
        if len(recent) >= LOGIN_FAILURES_PER_MINUTE:
            raise HTTPException(429, "too many failed logins; try again in a minute")

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


OIDC_COOKIE = "logistik_oidc"
OIDC_LOGIN_MAX_AGE_S = 600  # from the redirect to the provider until the callback
OIDC_HTTP_TIMEOUT_S = 10.0
OIDC_METADATA_TTL_S = 3600.0
CLOCK_SKEW_S = 120
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# alg -> (key type, hash name, curve)
JWS_ALGORITHMS: dict[str, tuple[str, str, str]] = {
    **{f"RS{n}": ("RSA", f"sha{n}", "") for n in (256, 384, 512)},
    **{f"PS{n}": ("RSA", f"sha{n}", "") for n in (256, 384, 512)},
    "ES256": ("EC", "sha256", "P-256"),
    "ES384": ("EC", "sha384", "P-384"),
    "ES512": ("EC", "sha512", "P-521"),
    "EdDSA": ("OKP", "", "Ed25519"),
    **{f"HS{n}": ("oct", f"sha{n}", "") for n in (256, 384, 512)},
}


def secure_url(url: str) -> bool:
    """Whether a provider URL is https, or http on loopback (a provider on this machine)."""
    parsed = urlsplit(url)
    return parsed.scheme == "https" or (parsed.scheme == "http" and parsed.hostname in LOOPBACK)


def safe_next(path: str) -> str:
    """A local path to return to after login; anything else (another site) becomes `/`."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path or "://" in path:
        return "/"
    return path


def split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """A compact JWS's header, claims, signed bytes and signature; ValueError when malformed."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    try:
        header, claims = (
            orjson.loads(b64url_decode(parts[0])),
            orjson.loads(b64url_decode(parts[1])),
        )
    except orjson.JSONDecodeError as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), b64url_decode(parts[2])


def _int(value: Any) -> int:
    return int.from_bytes(b64url_decode(str(value)), "big")


def verify_jws(alg: str, jwk: dict[str, Any], data: bytes, signature: bytes) -> bool:
    """Whether `signature` over `data` verifies with a public JWK under `alg`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    kty, hash_name, curve_name = JWS_ALGORITHMS[alg]
    if jwk.get("kty") != kty or (curve_name and jwk.get("crv") != curve_name):
        return False
    digest = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}.get(
        hash_name, hashes.SHA256()
    )
    try:
        if kty == "RSA":
            rsa_key = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if alg.startswith("RS")
                else padding.PSS(padding.MGF1(digest), padding.PSS.DIGEST_LENGTH)
            )
            rsa_key.verify(signature, data, pad, digest)
        elif kty == "EC":
            curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
            size = (curve[curve_name].key_size + 7) // 8
            if len(signature) != 2 * size:
                return False
            der = encode_dss_signature(
                int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            )
            numbers = ec.EllipticCurvePublicNumbers(
                _int(jwk["x"]), _int(jwk["y"]), curve[curve_name]
            )
            numbers.public_key().verify(der, data, ec.ECDSA(digest))
        else:
            ed_key = ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(str(jwk["x"])))
            ed_key.verify(signature, data)
    except (InvalidSignature, KeyError, ValueError, TypeError):
        return False
    return True


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
            refusal = f"{params['error']}: {params.get('error_description', '')}"
            raise HTTPException(403, f"the OpenID provider refused the login ({_line(refusal)})")
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
                502, f"the OpenID provider answered HTTP {status} {_line(str(said))}".rstrip()
            )
        return document


def _line(text: str, limit: int = 200) -> str:
    """Text as one short line."""
    return " ".join(text.split())[:limit]

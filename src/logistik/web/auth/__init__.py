"""Who may read and change state: API tokens, signed UI sessions with CSRF tokens, passwords.

Reading is open unless `web.auth.read` is `protected`; every state change needs either
`Authorization: Bearer <token>` or a session cookie together with its `X-CSRF-Token` header.
With no token, user or OpenID provider configured, state changes are refused.
"""

from logistik.web.auth.jws import b64url, b64url_decode, split_jwt, verify_jws
from logistik.web.auth.oidc import (
    OIDC_COOKIE,
    OidcLogin,
    check_claims,
    oidc_user,
    safe_next,
    secure_url,
)
from logistik.web.auth.passwords import hash_password, verify_password
from logistik.web.auth.sessions import CSRF_HEADER, SESSION_COOKIE, Auth, Identity, Signer

__all__ = [
    "CSRF_HEADER",
    "OIDC_COOKIE",
    "SESSION_COOKIE",
    "Auth",
    "Identity",
    "OidcLogin",
    "Signer",
    "b64url",
    "b64url_decode",
    "check_claims",
    "hash_password",
    "oidc_user",
    "safe_next",
    "secure_url",
    "split_jwt",
    "verify_jws",
    "verify_password",
]

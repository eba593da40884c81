"""Password hashes for `web.auth.users`: PBKDF2-SHA256, checked in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PBKDF2_PREFIX = "pbkdf2_sha256"
PBKDF2_ITERATIONS = 600_000


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS, salt: str = "") -> str:
    """A `pbkdf2_sha256$<iterations>$<salt>$<hash-b64>` hash for `web.auth.users`."""
    salt = salt or secrets.token_urlsafe(16)
    if "$" in salt:
        raise ValueError("the salt may not contain '$'")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{PBKDF2_PREFIX}${iterations}${salt}${base64.b64encode(digest).decode()}"


def config_value(encoded: str) -> str:
    """A hash as pasted into the config: each `$` doubled (there `$NAME` reads the environment)."""
    return encoded.replace("$", "$$")


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

"""Compact JSON Web Signatures: base64url, splitting a token, verifying with a public JWK."""

from __future__ import annotations

import base64
from typing import Any

import orjson

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


def b64url(data: bytes) -> str:
    """Unpadded base64url text."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url text; ValueError when it is not."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc


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

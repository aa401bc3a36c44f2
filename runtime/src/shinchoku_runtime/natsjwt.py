"""NATS nkeys and JWTs, as much as the auth callout needs: an account key that signs, the server's requests
verified, user JWTs issued.

An nkey is an Ed25519 key in NATS' text form (github.com/nats-io/nkeys): a type prefix byte, the 32 key
bytes, a CRC-16/XMODEM checksum (little-endian), base32 without padding; a seed carries the public type in its
second prefix byte. A NATS JWT is a compact JWS with `alg` `ed25519-nkey`, signed by the issuer's nkey, the
`iss` claim being that nkey's public text (github.com/nats-io/jwt, v2 claims).

Written here over `cryptography`'s Ed25519 rather than with the `nkeys` package: that package (0.2) signs
with PyNaCl, a second crypto library, and has no JWT support; what is needed is about forty lines, and the
test of the auth callout checks them against a real nats-server.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PREFIX_SEED = 18 << 3
PREFIX_ACCOUNT = 0
PREFIX_SERVER = 13 << 3
PREFIX_USER = 20 << 3
_PUBLIC_PREFIXES = {"A": PREFIX_ACCOUNT, "N": PREFIX_SERVER, "U": PREFIX_USER}
JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class InvalidNkey(ValueError):
    pass


class InvalidNatsJwt(ValueError):
    pass


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw + _crc16(raw).to_bytes(2, "little")).decode("ascii").rstrip("=")


def _unb32(text: str) -> bytes:
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, TypeError) as e:
        raise InvalidNkey(f"not an nkey: {e}") from None
    if len(raw) < 3 or _crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise InvalidNkey("not an nkey: bad checksum")
    return raw[:-2]


def public_key_bytes(public: str) -> bytes:
    """The 32 Ed25519 bytes of a public nkey (`A…`, `N…`, `U…`)."""
    raw = _unb32(public)
    if len(raw) != 33 or raw[0] not in _PUBLIC_PREFIXES.values():
        raise InvalidNkey("not an account, server or user public nkey")
    return raw[1:]


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 nkey with its seed (the private half: keep it 0600, never log it)."""

    prefix: int
    private: Ed25519PrivateKey

    @classmethod
    def create(cls, prefix: int = PREFIX_ACCOUNT) -> KeyPair:
        return cls(prefix, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        raw = _unb32(seed.strip())
        if len(raw) != 34 or raw[0] & 0xF8 != PREFIX_SEED:
            raise InvalidNkey("not an nkey seed")
        prefix = ((raw[0] & 0x07) << 5) | ((raw[1] & 0xF8) >> 3)
        return cls(prefix, Ed25519PrivateKey.from_private_bytes(raw[2:]))

    @property
    def seed(self) -> str:
        raw = self.private.private_bytes_raw()
        return _b32(bytes([PREFIX_SEED | (self.prefix >> 5), (self.prefix & 0x1F) << 3]) + raw)

    @property
    def public(self) -> str:
        key = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return _b32(bytes([self.prefix]) + key)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], issuer: KeyPair) -> str:
    """A NATS JWT of `claims`, issued (`iss`, `iat`, `jti`) and signed by `issuer`."""
    body = {"jti": _b64(secrets.token_bytes(24)), "iat": int(time.time()), **claims, "iss": issuer.public}
    head = _b64(json.dumps(JWT_HEADER, separators=(",", ":")).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signing_input = f"{head}.{payload}".encode("ascii")
    return f"{head}.{payload}.{_b64(issuer.sign(signing_input))}"


def decode(token: str) -> dict[str, Any]:
    """The claims of a NATS JWT whose signature verifies against its own `iss` nkey (integrity, not trust:
    the caller checks the issuer)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidNatsJwt("not a JWT")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except ValueError as e:
        raise InvalidNatsJwt(f"not a JWT: {e}") from None
    if not isinstance(header, dict) or header.get("alg") not in ("ed25519-nkey", "ed25519"):
        raise InvalidNatsJwt("not an nkey-signed JWT")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise InvalidNatsJwt("the JWT names no issuer")
    try:
        Ed25519PublicKey.from_public_bytes(public_key_bytes(claims["iss"])).verify(
            signature, f"{parts[0]}.{parts[1]}".encode("ascii")
        )
    except (InvalidSignature, InvalidNkey):
        raise InvalidNatsJwt("the JWT's signature does not verify against its issuer") from None
    return claims

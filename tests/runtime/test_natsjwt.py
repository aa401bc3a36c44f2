"""NATS nkeys and JWTs (`natsjwt`): text forms that round-trip, and a signature that binds every byte.

The real check is the auth callout test, where nats-server itself accepts what this module signs.
"""

from __future__ import annotations

import pytest

from shinchoku_runtime import natsjwt


@pytest.mark.parametrize(("prefix", "letter"), [(natsjwt.PREFIX_ACCOUNT, "A"), (natsjwt.PREFIX_USER, "U")])
def test_keys_round_trip_through_their_seed(prefix: int, letter: str) -> None:
    key = natsjwt.KeyPair.create(prefix)
    assert key.public.startswith(letter)
    assert key.seed.startswith("S" + letter)
    again = natsjwt.KeyPair.from_seed(key.seed)
    assert again.public == key.public
    assert len(natsjwt.public_key_bytes(key.public)) == 32


def test_a_changed_character_breaks_the_checksum() -> None:
    public = natsjwt.KeyPair.create().public
    changed = public[:10] + ("B" if public[10] != "B" else "C") + public[11:]
    with pytest.raises(natsjwt.InvalidNkey):
        natsjwt.public_key_bytes(changed)


def test_a_jwt_verifies_against_its_issuer_and_nothing_else() -> None:
    issuer = natsjwt.KeyPair.create()
    token = natsjwt.encode({"sub": "U", "nats": {"type": "user"}}, issuer)
    claims = natsjwt.decode(token)
    assert claims["iss"] == issuer.public
    assert claims["nats"] == {"type": "user"}
    head, _payload, signature = token.split(".")
    forged = natsjwt.encode({"sub": "U", "nats": {"type": "admin"}}, natsjwt.KeyPair.create()).split(".")[1]
    with pytest.raises(natsjwt.InvalidNatsJwt):
        natsjwt.decode(f"{head}.{forged}.{signature}")

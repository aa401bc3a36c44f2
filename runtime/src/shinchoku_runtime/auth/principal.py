"""Who is asking: a principal of DESIGN.md "Principals and access", and how a token's claims name one.

Pure functions over plain values (no I/O, no crypto): the verifier has already checked the signature,
issuer, audience and times before `principal_from_claims` reads the claims.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from contracts.agencies import Agency


class Role(StrEnum):
    """The four kinds of principal; `public` is whoever sends no token."""

    public = "public"
    agency = "agency"
    secretariat = "secretariat"
    operator = "operator"


#: The roles a token can carry (the public carries none).
TOKEN_ROLES: tuple[Role, ...] = (Role.agency, Role.secretariat, Role.operator)


@dataclass(frozen=True, slots=True)
class Principal:
    """One caller: its role, its agency when the role is `agency`, and the person (`sub`) behind the token."""

    role: Role
    agency: Agency | None = None
    subject: str | None = None

    def __post_init__(self) -> None:
        if (self.role is Role.agency) != (self.agency is not None):
            raise ValueError(f"a principal has an agency exactly when its role is agency (got {self!r})")

    @classmethod
    def public(cls) -> Principal:
        return cls(Role.public)

    @property
    def is_public(self) -> bool:
        return self.role is Role.public

    @property
    def label(self) -> str:
        """How messages name the principal: `agency mof`, `secretariat`, `the public`."""
        if self.role is Role.agency:
            return f"agency {self.agency}"
        return "the public" if self.role is Role.public else self.role.value

    def sees_agency(self, agency: Agency | str) -> bool:
        """Whether this principal may read what belongs to `agency` (its events, rejections, alerts)."""
        if self.role is Role.secretariat:
            return True
        return self.role is Role.agency and self.agency == agency


class NoPrincipal(Exception):
    """A token that verified but names no principal of Shinchoku (no role it knows, or several): a 403."""


@dataclass(frozen=True)
class ClaimMapping:
    """Where an identity provider puts the role and the agency in its tokens (see the package docstring).

    `role_claims`: claim paths read for role values (a string or an array of strings each); a path is a
    claim name, or dotted names into nested objects (`realm_access.roles`) when no claim has that literal
    name. `role_values`: an identity provider's value → the role it means. `agency_prefix`: a role value
    starting with it names an agency (`shinchoku-agency-mof` → agency mof). `agency_claim`: where the agency
    code is when a value maps to the role `agency`.
    """

    role_claims: Sequence[str] = ("role",)
    role_values: Mapping[str, Role] = field(
        default_factory=lambda: {r.value: r for r in TOKEN_ROLES},
    )
    agency_claim: str | None = "agency"
    agency_prefix: str | None = None
    subject_claim: str = "sub"


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim named `path`, or the nested value at its dotted path; None when absent."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        yield from (v for v in value if isinstance(v, str))


def agency_code(text: str) -> Agency | None:
    """The agency of a code as an identity provider may spell it (NFKC, any case, spaces around); None if none."""
    code = unicodedata.normalize("NFKC", text).strip().lower()
    return Agency(code) if code in Agency.__members__ else None


def principal_from_claims(claims: Mapping[str, Any], mapping: ClaimMapping) -> Principal:
    """The one principal a verified token's claims name; NoPrincipal (a 403) saying why when none or several."""
    subject = claim_at(claims, mapping.subject_claim)
    subject = subject if isinstance(subject, str) and subject else None
    found: set[tuple[Role, Agency | None]] = set()
    unknown_agencies: list[str] = []
    seen: list[str] = []
    for path in mapping.role_claims:
        for value in _strings(claim_at(claims, path)):
            seen.append(value)
            role = mapping.role_values.get(value)
            if role is Role.agency:
                raw = claim_at(claims, mapping.agency_claim) if mapping.agency_claim else None
                if not isinstance(raw, str) or not raw.strip():
                    raise NoPrincipal(
                        f"the token's role is agency but it names no agency (claim {mapping.agency_claim!r})"
                    )
                agency = agency_code(raw)
                if agency is None:
                    unknown_agencies.append(raw)
                else:
                    found.add((Role.agency, agency))
            elif role is not None:
                found.add((role, None))
            elif mapping.agency_prefix and value.startswith(mapping.agency_prefix):
                rest = value[len(mapping.agency_prefix) :]
                agency = agency_code(rest)
                if agency is None:
                    unknown_agencies.append(rest)
                else:
                    found.add((Role.agency, agency))
    if len(found) == 1:
        role, agency = next(iter(found))
        return Principal(role, agency, subject)
    if len(found) > 1:
        names = sorted(Principal(r, a).label for r, a in found)
        raise NoPrincipal(f"the token names several principals ({', '.join(names)}): an account must map to one")
    if unknown_agencies:
        raise NoPrincipal(f"the token names an agency that is not one of the 17 codes: {unknown_agencies[0]!r}")
    where = ", ".join(repr(p) for p in mapping.role_claims)
    shown = f" (it has {', '.join(repr(v) for v in seen[:5])})" if seen else ""
    raise NoPrincipal(f"the token carries no Shinchoku role in claim {where}{shown}")

"""How the claims of a verified token name a principal, for DESIGN.md's tokens and for Keycloak's and Entra ID's."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.agencies import Agency
from shinchoku_runtime.auth import AuthSettings, ClaimMapping, NoPrincipal, Principal, Role, principal_from_claims

DESIGN = ClaimMapping()
KEYCLOAK_ROLES = AuthSettings(
    _env_file=None,
    role_claim="realm_access.roles",
    role_values={
        "shinchoku-agency": "agency",
        "shinchoku-secretariat": "secretariat",
        "shinchoku-operator": "operator",
    },
).claim_mapping()
KEYCLOAK_GROUPS = AuthSettings(
    _env_file=None,
    role_claim="groups",
    agency_prefix="/shinchoku/agencies/",
    role_values={"/shinchoku/secretariat": "secretariat", "/shinchoku/operator": "operator"},
).claim_mapping()
ENTRA = AuthSettings(
    _env_file=None,
    role_claim="roles",
    agency_prefix="Shinchoku.Agency.",
    role_values={"Shinchoku.Secretariat": "secretariat", "Shinchoku.Operator": "operator"},
    subject_claim="oid",
).claim_mapping()


@pytest.mark.parametrize(
    ("mapping", "claims", "expected"),
    [
        (DESIGN, {"sub": "tanaka", "role": "agency", "agency": "mof"}, Principal(Role.agency, Agency.mof, "tanaka")),
        (DESIGN, {"sub": "sato", "role": "secretariat"}, Principal(Role.secretariat, None, "sato")),
        (
            DESIGN,
            {"sub": "sato", "role": "secretariat", "agency": "digital"},
            Principal(Role.secretariat, None, "sato"),
        ),
        (DESIGN, {"sub": "ito", "role": "operator"}, Principal(Role.operator, None, "ito")),
        # An agency code as a provider may spell it: other case, full-width letters, spaces.
        (DESIGN, {"sub": "a", "role": "agency", "agency": " ＭＯＦ "}, Principal(Role.agency, Agency.mof, "a")),
        (
            KEYCLOAK_ROLES,
            {"sub": "k", "realm_access": {"roles": ["offline_access", "shinchoku-agency"]}, "agency": "mhlw"},
            Principal(Role.agency, Agency.mhlw, "k"),
        ),
        (
            KEYCLOAK_ROLES,
            {"sub": "k", "realm_access": {"roles": ["uma_authorization", "shinchoku-secretariat"]}},
            Principal(Role.secretariat, None, "k"),
        ),
        (
            KEYCLOAK_GROUPS,
            {"sub": "g", "groups": ["/staff", "/shinchoku/agencies/cfa"]},
            Principal(Role.agency, Agency.cfa, "g"),
        ),
        (
            ENTRA,
            {"sub": "pairwise", "oid": "0b6c…", "roles": ["Shinchoku.Agency.nisc"]},
            Principal(Role.agency, Agency.nisc, "0b6c…"),
        ),
        (ENTRA, {"oid": "o", "roles": ["Shinchoku.Operator"]}, Principal(Role.operator, None, "o")),
        # A claim whose name holds dots (namespaced claims) is read as it is before any nesting is tried.
        (
            ClaimMapping(role_claims=("https://example.org/roles",)),
            {"sub": "n", "https://example.org/roles": ["secretariat"]},
            Principal(Role.secretariat, None, "n"),
        ),
    ],
)
def test_claims_name_one_principal(mapping: ClaimMapping, claims: dict[str, Any], expected: Principal) -> None:
    assert principal_from_claims(claims, mapping) == expected


@pytest.mark.parametrize(
    ("mapping", "claims", "problem"),
    [
        (DESIGN, {"sub": "x"}, "no Shinchoku role in claim 'role'"),
        (DESIGN, {"sub": "x", "role": "admin"}, "it has 'admin'"),
        (DESIGN, {"sub": "x", "role": "public"}, "no Shinchoku role"),
        (DESIGN, {"sub": "x", "role": "agency"}, "names no agency"),
        (DESIGN, {"sub": "x", "role": "agency", "agency": "tokyo"}, "not one of the 17 codes: 'tokyo'"),
        (DESIGN, {"sub": "x", "role": ["secretariat", "operator"]}, "several principals"),
        (KEYCLOAK_GROUPS, {"sub": "g", "groups": ["/shinchoku/agencies/mof", "/shinchoku/agencies/mof "]}, None),
        (KEYCLOAK_GROUPS, {"sub": "g", "groups": ["/shinchoku/agencies/mof", "/shinchoku/agencies/moj"]}, "several"),
        (ENTRA, {"oid": "o", "roles": ["Shinchoku.Agency."]}, "not one of the 17"),
        (ENTRA, {"oid": "o", "roles": "Shinchoku.Reader"}, "no Shinchoku role"),
    ],
)
def test_claims_naming_none_or_several_are_refused(
    mapping: ClaimMapping, claims: dict[str, Any], problem: str | None
) -> None:
    if problem is None:  # the same agency twice is one principal
        assert principal_from_claims(claims, mapping).agency is Agency.mof
        return
    with pytest.raises(NoPrincipal, match=problem):
        principal_from_claims(claims, mapping)


def test_a_principal_sees_only_what_its_role_allows() -> None:
    mof = Principal(Role.agency, Agency.mof, "t")
    assert mof.sees_agency(Agency.mof)
    assert mof.sees_agency("mof")
    assert not mof.sees_agency(Agency.digital)
    assert Principal(Role.secretariat).sees_agency(Agency.digital)
    assert not Principal(Role.operator).sees_agency(Agency.mof)
    assert not Principal.public().sees_agency(Agency.mof)
    with pytest.raises(ValueError, match="agency exactly when"):
        Principal(Role.agency)
    with pytest.raises(ValueError, match="agency exactly when"):
        Principal(Role.secretariat, Agency.mof)

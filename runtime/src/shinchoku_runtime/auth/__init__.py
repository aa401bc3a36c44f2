"""Bearer-token access for the services (DESIGN.md "Principals and access").

A request is made by a `Principal`: the public (no token), one of the 17 agencies, the `secretariat` or the
`operator`. Its token is a JWT signed by an issuer whose public keys (JWKS) the services fetch; `TokenVerifier`
checks it and `principal_from_claims` names the principal. Each route declares its gate with `require(...)`
or `public()` (see `dependencies`), and `access_table(app)` lists the routes with their gates.

Library: joserfc (JWS/JWT/JWK of RFC 7515–7519 and 7638 thumbprints). It is authlib's successor for JOSE
(authlib's own `authlib.jose` is deprecated in its favour and authlib now depends on it), is typed, keeps
key sets with `kid` lookup, refuses `none` unless asked, and validates registered claims with a leeway.
PyJWT would do too, but its JWKS client is synchronous (blocking the event loop on a refresh) and fetches
over urllib only; here the key set is fetched by our own async code (`jwks.JwksCache`), which also reads
the embedded issuer's `file://` key set through the same path.

Settings (`AuthSettings`, environment prefix `SHINCHOKU_AUTH_`):

- `MODE`: `embedded` (default: `shinchoku up` is the issuer, `iss` = `urn:shinchoku:embedded`, keys in
  `DATA_DIR/auth/jwks.json`) or `oidc` (a deployment's identity provider; `ISSUER` required, https).
- `ISSUER`, `JWKS_URL` (https://, file://, or http:// on loopback only; in oidc mode, when unset, the
  `jwks_uri` of `ISSUER/.well-known/openid-configuration`), `AUDIENCE` (default `shinchoku`).
- `ALGORITHMS` (default `RS256,ES256`; only asymmetric ones are accepted, never `none` or `HS*`),
  `LEEWAY` (seconds of clock skew on exp/nbf/iat, default 30, at most 300).
- `JWKS_REFRESH_INTERVAL` (least seconds between fetches caused by an unknown `kid`, default 30),
  `JWKS_MAX_AGE` (seconds before the keys are fetched again anyway, default 600), `HTTP_TIMEOUT`.

Claim mapping (which claims name the role and the agency):

- `ROLE_CLAIM`: claim path(s), comma-separated, whose value is a string or an array of strings. A path is a
  claim's name, or dotted names into nested objects when no claim has that literal name (so namespaced
  claims such as `https://example.org/roles` work as they are). Default `role`.
- `ROLE_VALUES`: JSON object from the provider's value to `agency` | `secretariat` | `operator`. Default
  the identity (`{"agency": "agency", "secretariat": "secretariat", "operator": "operator"}`); setting it
  replaces the default.
- `AGENCY_CLAIM`: claim path of the agency code, read when a value maps to `agency`. Default `agency`.
- `AGENCY_PREFIX`: a role value that starts with it names an agency by the rest (`shinchoku-agency-mof`).
- `SUBJECT_CLAIM`: the person (default `sub`; Entra's `oid` is stable across applications).

A token must name exactly one principal: none (no known value) or several (e.g. both `secretariat` and
`operator`) answers 403 saying so; an agency code that is not one of the 17 answers 403 too.

Examples:

- The tokens of DESIGN.md (`role`, `agency` claims): nothing to set besides issuer and audience.
- Keycloak, realm roles and a user attribute: a realm role per principal (`shinchoku-agency`,
  `shinchoku-secretariat`, `shinchoku-operator`), a "User Attribute" mapper putting the user's `agency`
  attribute into the access token, an "Audience" mapper adding `shinchoku`:
  `ROLE_CLAIM=realm_access.roles`,
  `ROLE_VALUES={"shinchoku-agency":"agency","shinchoku-secretariat":"secretariat","shinchoku-operator":"operator"}`.
  With client roles instead: `ROLE_CLAIM=resource_access.shinchoku.roles`. With groups (a "Group
  Membership" mapper, full path): `ROLE_CLAIM=groups`, `AGENCY_PREFIX=/shinchoku/agencies/` and
  `ROLE_VALUES={"/shinchoku/secretariat":"secretariat","/shinchoku/operator":"operator"}`.
- Microsoft Entra ID, app roles of the API's app registration (values `Shinchoku.Secretariat`,
  `Shinchoku.Operator`, `Shinchoku.Agency.mof`, …; group claims carry object ids, so roles are the way):
  `ISSUER=https://login.microsoftonline.com/TENANT/v2.0`, `AUDIENCE=` the API's application id (or its
  `api://…` URI, as the tokens carry it), `ROLE_CLAIM=roles`, `AGENCY_PREFIX=Shinchoku.Agency.`,
  `ROLE_VALUES={"Shinchoku.Secretariat":"secretariat","Shinchoku.Operator":"operator"}`, `SUBJECT_CLAIM=oid`.
"""

from shinchoku_runtime.auth.dependencies import (
    PRINCIPAL_SCOPE_KEY,
    AccessRule,
    Forbidden,
    RouteAccess,
    Unauthorized,
    access_table,
    bearer_token,
    current_principal,
    ensure,
    hide_from,
    install_auth,
    own_agency_filter,
    public,
    require,
)
from shinchoku_runtime.auth.jwks import JwksCache, KeysUnavailable, UnknownKey
from shinchoku_runtime.auth.principal import (
    TOKEN_ROLES,
    ClaimMapping,
    NoPrincipal,
    Principal,
    Role,
    principal_from_claims,
)
from shinchoku_runtime.auth.settings import (
    DEFAULT_AUDIENCE,
    EMBEDDED_ISSUER,
    AuthSettings,
    embedded_auth_dir,
    embedded_jwks_path,
)
from shinchoku_runtime.auth.verifier import InvalidToken, TokenVerifier

__all__ = [
    "DEFAULT_AUDIENCE",
    "EMBEDDED_ISSUER",
    "PRINCIPAL_SCOPE_KEY",
    "TOKEN_ROLES",
    "AccessRule",
    "AuthSettings",
    "ClaimMapping",
    "Forbidden",
    "InvalidToken",
    "JwksCache",
    "KeysUnavailable",
    "NoPrincipal",
    "Principal",
    "Role",
    "RouteAccess",
    "TokenVerifier",
    "Unauthorized",
    "UnknownKey",
    "access_table",
    "bearer_token",
    "current_principal",
    "embedded_auth_dir",
    "embedded_jwks_path",
    "ensure",
    "hide_from",
    "install_auth",
    "own_agency_filter",
    "principal_from_claims",
    "public",
    "require",
]

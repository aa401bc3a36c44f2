"""FastAPI dependencies: the principal of a request, the gate of each route, and the table of routes and gates.

A service installs its verifier once (`install_auth`) and declares on every route who may call it, with one
of two gates: `require(roles…)` (a token of one of these roles) or `public()` (anyone; a token, when sent,
must still be valid). A handler that decides further (closed quarters for the public, open ones for agencies)
takes the principal from its gate and calls `ensure` for the narrower case, so every 401/403 is made here:

- no token where one is needed: 401, `WWW-Authenticate: Bearer realm="shinchoku"`;
- a token that does not verify (malformed, bad signature, unknown key, expired, other issuer or audience):
  401, `WWW-Authenticate: Bearer error="invalid_token", error_description="…"`;
- a valid token without the right (or naming no principal of Shinchoku): 403;
- an agency asking for another agency's event: `hide_from` answers 404, as for an event that does not exist.

Bodies are `{"detail": message}` like every other error of the services. `access_table(app)` lists each
route with its gate, so an access test can be generated from it and a route without a gate fails it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import fastapi.routing
from fastapi import Depends, FastAPI, HTTPException, Request

from contracts.agencies import Agency
from shinchoku_runtime.auth.jwks import KeysUnavailable
from shinchoku_runtime.auth.principal import NoPrincipal, Principal, Role
from shinchoku_runtime.auth.verifier import InvalidToken, TokenVerifier
from shinchoku_runtime.http import NotFound

REALM = "shinchoku"
_ACCESS_RULE = "__access_rule__"
#: ASGI scope key under which code of the same process passes the principal of an in-process request (the
#: dashboard reading its own API as the signed-in user). A client on the network cannot set scope keys.
PRINCIPAL_SCOPE_KEY = "shinchoku.principal"


@dataclass(frozen=True)
class AccessRule:
    """Who passes a route's gate (`roles`, with `Role.public` when no token is needed) and, in `note`, what
    the handler narrows further (e.g. "open quarters: agency, secretariat")."""

    name: str
    roles: frozenset[Role]
    note: str = ""

    @property
    def public(self) -> bool:
        return Role.public in self.roles

    def admits(self, principal: Principal) -> bool:
        return principal.role in self.roles


def _header_text(text: str) -> str:
    """A message fit for a quoted header parameter: printable ASCII without quotes or backslashes."""
    cleaned = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)
    return cleaned[:200]


class Unauthorized(HTTPException):
    """401: no token where one is needed, or a token that does not verify."""

    def __init__(self, detail: str, *, invalid_token: bool) -> None:
        challenge = f'Bearer realm="{REALM}"'
        if invalid_token:
            challenge += f', error="invalid_token", error_description="{_header_text(detail)}"'
        super().__init__(401, detail, headers={"WWW-Authenticate": challenge})


class Forbidden(HTTPException):
    """403: a valid token without the right."""

    def __init__(self, detail: str) -> None:
        challenge = f'Bearer realm="{REALM}", error="insufficient_scope"'
        super().__init__(403, detail, headers={"WWW-Authenticate": challenge})


def install_auth(
    app: FastAPI, verifier: TokenVerifier, *, session: Callable[[Request], Principal | None] | None = None
) -> None:
    """Make `verifier` the one this app's gates use; `session` names the principal of a request that carries no
    token but a browser session of this app (the dashboard's signed cookie), else None."""
    app.state.token_verifier = verifier
    app.state.session_principal = session


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`; None without the header; 401 for another scheme."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("expected the header 'Authorization: Bearer <token>'", invalid_token=True)
    return token.strip()


async def current_principal(request: Request) -> Principal:
    """Who sends the request: the public without a token, else the principal of a token that verifies (or, for
    an in-process request, the principal its caller put in the scope)."""
    given = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if isinstance(given, Principal):
        return given
    token = bearer_token(request)
    if token is None:
        session: Callable[[Request], Principal | None] | None = getattr(request.app.state, "session_principal", None)
        signed_in = session(request) if session is not None else None
        return signed_in or Principal.public()
    verifier: TokenVerifier | None = getattr(request.app.state, "token_verifier", None)
    if verifier is None:
        raise RuntimeError("install_auth(app, verifier) was not called for this app")
    try:
        return await verifier.verify(token)
    except InvalidToken as e:
        raise Unauthorized(str(e), invalid_token=True) from None
    except NoPrincipal as e:
        raise Forbidden(str(e)) from None
    except KeysUnavailable as e:
        raise HTTPException(503, str(e)) from None


def _roles_text(roles: Iterable[Role]) -> str:
    return " or ".join(r.value for r in sorted(roles, key=list(Role).index) if r is not Role.public)


def ensure(principal: Principal, roles: Collection[Role], what: str = "this") -> Principal:
    """`principal` when its role is among `roles`; else 401 for the public, 403 for another role."""
    if principal.role in roles:
        return principal
    needed = _roles_text(roles)
    if principal.is_public:
        raise Unauthorized(f"{what} needs a bearer token (Authorization: Bearer …) of {needed}", invalid_token=False)
    raise Forbidden(f"{principal.label} may not read {what} (it is for {needed})")


def hide_from(principal: Principal, agency: Agency | str, not_found: str) -> None:
    """404 with `not_found` (the message a missing item gets) unless `principal` may see `agency`'s items."""
    if not principal.sees_agency(agency):
        raise NotFound(not_found)


def own_agency_filter(principal: Principal, requested: str | None, what: str) -> str | None:
    """The `agency` filter of a list of `what` for `principal`: an agency reads its own only (naming another: 403),
    anyone else filters as asked."""
    if principal.role is Role.agency:
        own = str(principal.agency)
        if requested not in (None, own):
            raise Forbidden(f"{principal.label} may read its own {what} only, not {requested}'s")
        return own
    return requested


def gate(rule: AccessRule) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets through the principals `rule` admits and answers 401/403 to the others."""

    async def dependency(principal: Annotated[Principal, Depends(current_principal)], request: Request) -> Principal:
        return ensure(principal, rule.roles, request.url.path)

    dependency.__name__ = "gate_" + re.sub(r"\W", "_", rule.name)
    setattr(dependency, _ACCESS_RULE, rule)
    return dependency


def require(*roles: Role, note: str = "") -> Callable[..., Awaitable[Principal]]:
    """A gate for a token of one of `roles` (e.g. `require(Role.agency, Role.secretariat)`)."""
    if not roles or Role.public in roles:
        raise ValueError("require() takes the token roles that pass; use public() for routes open to anyone")
    return gate(AccessRule("+".join(r.value for r in roles), frozenset(roles), note))


def public(note: str = "") -> Callable[..., Awaitable[Principal]]:
    """A gate open to anyone (a token, when sent, must verify): the principal is the public without one."""
    return gate(AccessRule("public", frozenset(Role), note))


# -- the table of routes and their gates --------------------------------------------------------------------


@dataclass(frozen=True)
class RouteAccess:
    """One route of an app with the gate(s) found on it (none: the route has no rule, a test should fail)."""

    path: str
    methods: frozenset[str]
    rules: tuple[AccessRule, ...]

    @property
    def rule(self) -> AccessRule | None:
        return self.rules[0] if len(self.rules) == 1 else None


def _rules_in(dependant: Any) -> list[AccessRule]:
    """The gates in a route's dependency tree (a gate's own sub-dependencies are not searched)."""
    found: list[AccessRule] = []
    for sub in getattr(dependant, "dependencies", ()):
        rule = getattr(getattr(sub, "call", None), _ACCESS_RULE, None)
        if isinstance(rule, AccessRule):
            found.append(rule)
        else:
            found.extend(_rules_in(sub))
    return found


def _route_contexts(app: FastAPI) -> list[Any]:
    # FastAPI ≥ 0.16x keeps an included router as one entry and resolves its routes (with the include's
    # dependencies) through `iter_route_contexts`; earlier versions copy them into app.routes.
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(iterate(app.routes)) if iterate is not None else list(app.routes)


def framework_routes(app: FastAPI) -> dict[str, AccessRule]:
    """FastAPI's own pages (the OpenAPI document and its viewers): public, they describe the API only."""
    paths = (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    rule = AccessRule("public", frozenset(Role), "API documentation")
    return {p: rule for p in paths if p}


def access_table(app: FastAPI, extra: Mapping[str, AccessRule] | None = None) -> list[RouteAccess]:
    """Every route of `app` with its gate(s); routes without a dependant (mounts, plain Starlette routes) take
    theirs from `extra` (path → rule) or FastAPI's documentation pages, and have none otherwise."""
    known = {**framework_routes(app), **(extra or {})}
    table: list[RouteAccess] = []
    for route in _route_contexts(app):
        path = str(getattr(route, "path", None) or getattr(route, "path_format", "") or repr(route))
        methods = frozenset(getattr(route, "methods", None) or ())
        dependant = getattr(route, "dependant", None)
        if dependant is not None:
            rules = tuple(_rules_in(dependant))
        else:
            rules = (known[path],) if path in known else ()
        table.append(RouteAccess(path, methods, rules))
    return table

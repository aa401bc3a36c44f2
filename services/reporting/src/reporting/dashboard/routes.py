"""The dashboard's HTTP routes: server-rendered pages at `/` and `/dashboard`, a cheap live probe, static files."""

from __future__ import annotations

import gzip
import hashlib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from contracts.periods import TOKYO
from reporting import access
from reporting.access import DashboardReader
from reporting.dashboard import view
from reporting.dashboard.i18n import DISPLAY_ORDER, STATUS_GLYPHS, TEXT, agency_name, section_title
from reporting.dashboard.pages import fingerprint, latest_quarter, measure_page, overview_page
from reporting.dashboard.review import drop_flash, new_ticket, take_flash
from reporting.dashboard.review import router as review_router
from reporting.dashboard.session import csrf_token, keep_csrf
from reporting.dashboard.signin import router as signin_router
from reporting.dashboard.signin import viewer
from reporting.dashboard.source import ApiSource, RollupSource, SourceError
from reporting.dashboard.state import BadState, ViewState
from reporting.dashboard.text import reveal
from shinchoku_runtime.auth import Principal, Role

_HERE = Path(__file__).parent
_STATIC = _HERE / "static"
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}

#: How often an open overview asks whether new reports were admitted.
LIVE_INTERVAL_SECONDS = 5


def _static_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(_STATIC.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


STATIC_VERSION = _static_version()

templates = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.globals.update(
    TEXT=TEXT,
    STATUS_GLYPHS=STATUS_GLYPHS,
    DISPLAY_ORDER=DISPLAY_ORDER,
    agency_name=agency_name,
    section_title=section_title,
    status_label=view.status_label,
    percent=view.percent,
    tokyo_time=view.tokyo_time,
    quarter_label=view.quarter_label,
    static_version=STATIC_VERSION,
    live_interval=LIVE_INTERVAL_SECONDS,
    reveal=reveal,
)

router = APIRouter(include_in_schema=False)


def get_source(request: Request, principal: DashboardReader) -> RollupSource:
    """The app's own rollup API, in-process, read as whoever views the page (the API's rules apply). The viewer is
    kept for the page too (`viewing`): a route takes one gate, this one's."""
    request.state.dashboard_viewer = viewer(principal)
    return ApiSource(request.app, viewer(principal))


def viewing(request: Request) -> Principal:
    """Who views the page, as the source's gate found (the public when no source was made for this request)."""
    who = getattr(request.state, "dashboard_viewer", None)
    return who if isinstance(who, Principal) else Principal.public()


SourceDep = Annotated[RollupSource, Depends(get_source)]


def ingest_url(request: Request) -> str:
    """Where ingest's `GET /events/{id}` lives: the app's settings when they say, else the default port."""
    settings = getattr(request.app.state, "settings", None)
    url = getattr(settings, "ingest_url", None)
    return str(url).rstrip("/") if url else "http://127.0.0.1:8002"


#: The dashboard's pages load their own CSS and script only, are framed by no one and send forms only here.
#: Inline `style` attributes (the bars' widths) are allowed; inline scripts and styles elements are not.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; style-src-elem 'self'; "
    "style-src-attr 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def chrome(request: Request) -> dict[str, Any]:
    """What every page shows around its content: who is signed in, and the CSRF token of the sign-out form."""
    sessions = getattr(request.app.state, "dashboard_sessions", None)
    who = sessions.principal(request) if sessions is not None else None
    bearer = request.headers.get("authorization")
    return {
        "viewer": who.label if who else None,
        "viewer_sub": who.subject if who else None,
        "bearer": bool(bearer) and who is None,
        "csrf": csrf_token(request),
        "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
    }


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
    """A page of the dashboard with its chrome (who is signed in), its CSRF cookie and its security headers."""
    response = _html(request, templates.get_template(template).render(**{**chrome(request), **context}), status_code)
    sessions = getattr(request.app.state, "dashboard_sessions", None)
    if sessions is not None:
        keep_csrf(response, request, sessions)
    return response


def _html(request: Request, text: str, status_code: int = 200) -> Response:
    """HTML, gzip-compressed when the browser accepts it (the grid is repetitive markup)."""
    body = text.encode("utf-8")
    headers = {"Cache-Control": "no-cache", "Vary": "Accept-Encoding", **SECURITY_HEADERS}
    if "gzip" in request.headers.get("accept-encoding", "") and len(body) > 1024:
        body = gzip.compress(body, compresslevel=6)
        headers["Content-Encoding"] = "gzip"
    return Response(body, status_code=status_code, media_type="text/html; charset=utf-8", headers=headers)


def _error(request: Request, state: ViewState | None, status_code: int, message: str) -> Response:
    lang = state.lang if state else ("en" if request.query_params.get("lang") == "en" else "ja")
    context = {"lang": lang, "t": TEXT[lang], "message": message, "status_code": status_code, "lang_toggle": ""}
    return render(request, "error.html", {**context, "state": state}, status_code)


def _state(request: Request) -> ViewState:
    return ViewState.from_query(dict(request.query_params))


@router.get("/", response_class=Response)
@router.get("/dashboard", response_class=Response)
async def overview(request: Request, source: SourceDep) -> Response:
    """The quarter overview (HTML); `?partial=1` answers the live part only."""
    try:
        state = _state(request)
    except BadState as e:
        return _error(request, None, 400, str(e))
    partial = request.query_params.get("partial") == "1"
    canonical = state.query()
    if not partial and request.url.query and request.url.query != canonical.lstrip("?"):
        # A submitted form carries empty and default fields: answer with the short URL a view is shared by.
        return RedirectResponse(request.url.path + canonical, status_code=303)
    now = datetime.now(TOKYO)
    try:
        context = await overview_page(source, state, now)
    except SourceError as e:
        return _error(request, state, e.status if e.status < 500 else 502, e.message)
    template = "_overview_body.html" if partial else "overview.html"
    return render(request, template, context)


@router.get("/dashboard/live")
async def live(request: Request, source: SourceDep) -> Response:
    """A fingerprint of what the overview shows; the page re-renders its live part when it changes."""
    try:
        state = _state(request)
    except BadState as e:
        return JSONResponse({"detail": str(e)}, status_code=400)
    now = datetime.now(TOKYO)
    try:
        last_admitted = await source.last_admitted()
        quarter = state.quarter or await latest_quarter(source, now)
        rollup = await source.rollup(quarter, as_of=state.as_of)
    except SourceError as e:
        return JSONResponse({"detail": e.message}, status_code=e.status if e.status < 500 else 502)
    return JSONResponse(
        {"version": fingerprint(last_admitted, rollup), "label": quarter.label, "checked_at": now.isoformat()},
        headers={"Cache-Control": "no-store"},
    )


@router.get("/dashboard/measures/{measure_id}", response_class=Response)
async def measure(request: Request, measure_id: str, source: SourceDep) -> Response:
    """One measure: targets, status history, each lead's reports and their lineage (HTML); for the secretariat,
    each report's review form (`reporting.dashboard.review`)."""
    try:
        state = _state(request)
    except BadState as e:
        return _error(request, None, 400, str(e))
    now = datetime.now(TOKYO)
    try:
        context = await measure_page(source, state, measure_id, now, ingest_url=ingest_url(request))
    except SourceError as e:
        return _error(request, state, e.status if e.status < 500 else 502, e.message)
    # Reviews are of the reports as they stand: not from a view of an earlier moment.
    context["can_review"] = viewing(request).role is Role.secretariat and state.as_of is None
    context["new_ticket"] = lambda: new_ticket(request.app.state.dashboard_sessions)
    context["flash"] = take_flash(request)
    response = render(request, "measure.html", context)
    drop_flash(response, request)
    return response


@router.get("/dashboard/static/{name}", dependencies=[Depends(access.OPEN)])
async def static(request: Request, name: str) -> Response:
    """The dashboard's own CSS and JavaScript (vendored: nothing is fetched from elsewhere)."""
    path = _STATIC / name
    if path.suffix not in _STATIC_TYPES or path.parent != _STATIC or not path.is_file():
        return JSONResponse({"detail": f"no such static file: {name}"}, status_code=404)
    body = path.read_bytes()
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "Vary": "Accept-Encoding", **SECURITY_HEADERS}
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(body, compresslevel=6)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=_STATIC_TYPES[path.suffix], headers=headers)


router.include_router(signin_router)
router.include_router(review_router)

"""The dashboard at `/` and `/dashboard`: server-rendered pages over the reporting service's own rollup API."""

from reporting.dashboard.routes import router

__all__ = ["router"]

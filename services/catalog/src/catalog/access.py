"""Who may call each route of the catalog (DESIGN.md "Principals and access"), declared here and nowhere else.

The plan's measures, agencies and sections are public: every route of `catalog.api.router` takes the `PUBLIC`
gate at the router (a route added there later is public too, as the catalog's documents are). `/metrics` is
the operator's (`shinchoku_runtime.service.add_metrics_route`), `/livez` and `/healthz` are open to anyone
(an orchestrator's probes carry no token).
"""

from __future__ import annotations

from shinchoku_runtime.auth import public

#: The gate of every route on the catalog's router: anyone (a token, when sent, must still verify).
PUBLIC = public(note="the plan's measures, agencies and sections are public")

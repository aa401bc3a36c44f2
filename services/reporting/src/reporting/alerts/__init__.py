"""Alerts as events (DESIGN.md "Alerts"): conditions over the store, raised once and resolved once, published on
ALERTS, posted to a webhook, listed on `GET /alerts`.

`conditions` (pure rules) → `evaluate` (the diff against what was raised, one transaction with the outbox) →
`delivery` (ALERTS stream, webhook); `service` decides when; `store` holds all the SQL.
"""

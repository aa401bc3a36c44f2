"""Shinchoku runtime kit shared by the services (settings, database, NATS, telemetry, HTTP)."""

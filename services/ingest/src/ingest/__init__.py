"""Shinchoku ingest service."""

"""Shinchoku reporting service."""

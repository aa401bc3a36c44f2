"""Shinchoku catalog service."""

"""Metrics, logs and the request context."""

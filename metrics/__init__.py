"""Prometheus metrics: definitions on an injected registry, fed from the engine's dataclasses."""

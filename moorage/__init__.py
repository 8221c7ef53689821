"""Moorage: a container image registry (Docker Registry v2 / OCI Distribution, and Docker v1)."""

__version__ = "0.1.0"

"""The Docker Registry HTTP API v2 / OCI Distribution Spec v1.1 under `/v2/`."""

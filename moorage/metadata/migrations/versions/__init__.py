"""Alembic revisions, one module each (`NNNN_what.py`), loaded by Alembic from their files."""

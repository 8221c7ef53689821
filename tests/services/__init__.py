"""Real services for the scale-out tests (PostgreSQL 15, S3 on Swift, HAProxy): shell scripts
that install, start, check and stop them, and the pytest fixtures that use them."""

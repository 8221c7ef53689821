"""Identities, access rules, tokens. Decides who may do what; never formats protocol errors."""

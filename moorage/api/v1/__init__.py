"""The legacy Docker v1 registry + index protocol under `/v1/` (and `/_ping`)."""

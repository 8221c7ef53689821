"""The legacy Docker v1 registry + index protocol under `/v1/` (and `/_ping`); "contract N" and
"section N" in this package are sections of docs/contracts/v1-protocol.md."""

"""Process-level tests: a real `moorage serve` process, killed, restarted and measured."""

"""User-facing error types: a ConfigError names the offending key and the fix (exit status 2)."""

from __future__ import annotations


class ConfigError(Exception):
    """A bad config, a bad CLI argument or an unusable input, reported as one line and exit status 2."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    def __reduce__(self):  # copy/pickle (Ray ships a trial's error across processes) keep both
        return (type(self), (self.key, self.message))


class FedRayRuntimeError(RuntimeError):
    """A failure during a run (exit status 1); the run directory stays resumable."""


class ClientOutOfMemory(RuntimeError):
    """A client's task ran out of its worker's GPU memory: that client fails, its worker lives on."""

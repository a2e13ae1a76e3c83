"""Every error a user can cause, in one tree under `NeuroLensError`.

A leaf module: it imports nothing of ours, so every folder (probes, engine, store, ...) may
raise these classes without breaking the layering of DESIGN's layout table. The folders
re-export the class they own (`neurolens.probes.ProbeError`, `neurolens.store.StoreError`, ...).
The CLI turns any of them into one line on stderr and exit status 2 (`neurolens.cli.main`);
from Python they are ordinary exceptions whose message is that one line.
"""
from __future__ import annotations


class NeuroLensError(Exception):
    """Something a user asked for cannot be done; the message's first line says why."""


class ModelError(NeuroLensError, ValueError):
    """A model a user named cannot be used; the message is one clear line."""


class ProbeError(NeuroLensError, ValueError):
    """A probe the user supplied (or named) is unusable; the message is one clear line."""


class StoreError(NeuroLensError, RuntimeError):
    """The store is unusable (missing, corrupt, full, read-only, or written by a newer version)."""


class QueryError(NeuroLensError, ValueError):
    """A query cannot run as asked; the message is one clear line."""


class ReportError(NeuroLensError, ValueError):
    """A report cannot be rendered from what is in the store; the message is one clear line."""


class ConfigError(NeuroLensError, ValueError):
    """A run setting is out of range (pooling, batch size, top-k, ...)."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its class name."""
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes a CLI or a sweep reports as one line (kept for callers)."""
    return (NeuroLensError,)


__all__ = ["ConfigError", "ModelError", "NeuroLensError", "ProbeError", "QueryError", "ReportError",
           "StoreError", "first_line", "user_errors"]

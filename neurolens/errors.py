"""The errors a user can cause. The CLI turns each into one line on stderr and exit 2."""
from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    from neurolens.engine.adapters.base import ModelError
    from neurolens.probes.types import ProbeError
    from neurolens.store import StoreError

    errs: list[type[BaseException]] = [ModelError, ProbeError, StoreError]
    for mod, name in (("neurolens.queries", "QueryError"), ("neurolens.reports", "ReportError")):
        try:
            errs.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errs)

"""Where outputs go: `out`, else $NEUROLENS_OUT, else ./neurolens-out; the store is `<out>/store`.

The one place this is resolved (the CLI, the Python API and the query runner all ask here).
"""
from __future__ import annotations

import os
from pathlib import Path


def out_dir(out: str | os.PathLike[str] | None = None) -> Path:
    return Path(out or os.environ.get("NEUROLENS_OUT") or "neurolens-out").expanduser().resolve()


def store_dir(out: str | os.PathLike[str] | None = None) -> Path:
    return out_dir(out) / "store"


def reports_dir(out: str | os.PathLike[str] | None = None) -> Path:
    return out_dir(out) / "reports"


__all__ = ["out_dir", "reports_dir", "store_dir"]

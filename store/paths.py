"""Where outputs go: `out`, else $NEUROLENS_OUT, else ./neurolens-out; the store is `<out>/store`.

The one place this is resolved (the CLI, the Python API and the query runner all ask here).
"""
from __future__ import annotations

import os
from pathlib import Path


REMOTE = ("s3://", "s3a://", "gs://", "gcs://")


def out_dir(out: str | os.PathLike[str] | None = None) -> Path | str:
    """A local folder (resolved), or an object-store URI (`s3://bucket/prefix`) kept as text."""
    o = out or os.environ.get("NEUROLENS_OUT") or "neurolens-out"
    if isinstance(o, str) and o.startswith(REMOTE):
        return o.rstrip("/")
    return Path(o).expanduser().resolve()


def store_dir(out: str | os.PathLike[str] | None = None) -> Path | str:
    o = out_dir(out)
    return f"{o}/store" if isinstance(o, str) else o / "store"


def reports_dir(out: str | os.PathLike[str] | None = None) -> Path:
    """Reports are files to open in a browser: for a remote `out` they are written locally,
    under $NEUROLENS_REPORTS (default ./neurolens-reports)."""
    o = out_dir(out)
    if isinstance(o, str):
        return Path(os.environ.get("NEUROLENS_REPORTS") or "neurolens-reports").expanduser().resolve()
    return o / "reports"


__all__ = ["out_dir", "reports_dir", "store_dir"]

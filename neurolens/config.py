"""Where outputs go: `--out`, else $NEUROLENS_OUT, else ./neurolens-out (never the checkout's
source folders)."""
from __future__ import annotations

import os
from pathlib import Path


def out_dir(out: str | os.PathLike[str] | None = None) -> Path:
    return Path(out or os.environ.get("NEUROLENS_OUT") or "neurolens-out").expanduser().resolve()


def store_dir(out: str | os.PathLike[str] | None = None) -> Path:
    return out_dir(out) / "store"


def reports_dir(out: str | os.PathLike[str] | None = None) -> Path:
    return out_dir(out) / "reports"

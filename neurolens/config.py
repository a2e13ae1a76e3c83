"""Where outputs go: `--out`, else $NEUROLENS_OUT, else ./neurolens-out (never the checkout's
source folders). Resolved once, in neurolens.store.paths."""
from __future__ import annotations

from neurolens.store.paths import out_dir, reports_dir, store_dir

__all__ = ["out_dir", "reports_dir", "store_dir"]

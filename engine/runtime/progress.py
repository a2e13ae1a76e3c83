"""Progress for engine stages without importing the CLI: callers pass anything with a
`stage(name, total)` context manager (neurolens.progress.Bars), or nothing."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def stage(bars: Any, name: str, total: int) -> Iterator[Callable[[int], None]]:
    if bars is None:
        yield lambda n: None
        return
    with bars.stage(name, total) as tick:
        yield tick

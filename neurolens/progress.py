"""Rich progress bars for long stages: on in a terminal and in Jupyter (rich renders them as a
live widget there), silent when output is piped or is JSON."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Tick = Callable[[int], None]


def interactive(console: Console) -> bool:
    """A terminal on stderr, or a Jupyter kernel (where stderr is never a tty)."""
    return bool(console.is_jupyter or sys.stderr.isatty())


class Bars:
    """One rich Progress shared by every stage of a run; `stage(name, total)` adds a bar."""

    def __init__(self, enabled: bool | None = None):
        self.console = Console(stderr=True)
        self.enabled = interactive(self.console) if enabled is None else enabled
        self._p: Progress | None = None

    def __enter__(self) -> Bars:
        if self.enabled:
            self._p = Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(),
                               MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                               transient=False)
            self._p.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)  # type: ignore[arg-type]
            self._p = None

    @contextlib.contextmanager
    def stage(self, name: str, total: int) -> Iterator[Tick]:
        if self._p is None:
            yield lambda n: None
            return
        task = self._p.add_task(name, total=total)
        yield lambda n: self._p.advance(task, n) if self._p is not None else None
        self._p.update(task, completed=total)

    def log(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg)

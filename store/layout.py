"""Where things live under `<out>/store/`, and how a partition becomes visible.

A partition is a Hive directory (`scores/model=minilm/concept=negation/`). It is
built under `_staging/`, then published by a rename, so a reader sees either the
old complete partition or the new complete one, never a half-written one. Each
published partition carries `_partition.json`: the run that wrote it and the key of
the work it holds, which is how a re-run knows it can skip.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import PARTITIONS

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
MARKER = "_partition.json"


class StoreError(RuntimeError):
    """The store cannot be read or written as asked; the message is one clear line."""


def check_name(kind: str, value: str) -> str:
    """Partition values become directory names: keep them plain."""
    if not _SAFE.match(str(value)):
        raise StoreError(f"{kind} name {value!r} is not usable in the store (letters, digits, . _ + - only)")
    return str(value)


class Store:
    """The Parquet store rooted at `root` (usually `<out>/store`)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    # -- paths -------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        if table not in PARTITIONS:
            raise StoreError(f"unknown table {table!r}")
        return self.root / table

    def partition_dir(self, table: str, parts: Mapping[str, object]) -> Path:
        keys = PARTITIONS[table]
        if set(parts) != set(keys):
            raise StoreError(f"table {table} is partitioned by {keys}, got {tuple(parts)}")
        d = self.table_dir(table)
        for k in keys:
            d = d / f"{k}={check_name(k, str(parts[k]))}"
        return d

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "_staging").mkdir(exist_ok=True)
            probe = self.root / f".write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StoreError(f"cannot write to the store at {self.root}: {e.strerror or e}") from None

    # -- locking -----------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """A store-wide lock held only for the instant of a publish."""
        self.ensure()
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- partitions --------------------------------------------------------
    def marker(self, table: str, parts: Mapping[str, object]) -> dict | None:
        f = self.partition_dir(table, parts) / MARKER
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            return None

    def is_complete(self, table: str, parts: Mapping[str, object], key: str) -> bool:
        m = self.marker(table, parts)
        return bool(m) and m.get("key") == key

    def staging(self) -> Path:
        """A fresh private directory to build partitions in before publishing."""
        self.ensure()
        d = self.root / "_staging" / uuid.uuid4().hex
        d.mkdir(parents=True)
        return d

    def publish(self, table: str, parts: Mapping[str, object], staged: Path, *, key: str, run_id: str,
                extra: Mapping[str, object] | None = None) -> Path:
        """Make the staged directory the partition, replacing any old one atomically enough
        that no reader sees a partial partition (old complete → new complete)."""
        final = self.partition_dir(table, parts)
        files = sorted(p.name for p in staged.glob("*.parquet"))
        meta = {"key": key, "run_id": run_id, "files": files, **(extra or {})}
        (staged / MARKER).write_text(json.dumps(meta))
        with self.lock():
            final.parent.mkdir(parents=True, exist_ok=True)
            trash = None
            if final.exists():
                trash = self.root / "_staging" / f"old-{uuid.uuid4().hex}"
                os.replace(final, trash)
            os.replace(staged, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return final

    def write_partition(self, table: str, parts: Mapping[str, object], data: pa.Table, *, key: str,
                        run_id: str, extra: Mapping[str, object] | None = None) -> Path:
        staged = self.staging()
        write_parquet(data, staged / f"part-{run_id}.parquet")
        return self.publish(table, parts, staged, key=key, run_id=run_id, extra=extra)

    def drop_partition(self, table: str, parts: Mapping[str, object]) -> None:
        final = self.partition_dir(table, parts)
        if final.exists():
            with self.lock():
                trash = self.root / "_staging" / f"old-{uuid.uuid4().hex}"
                os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)

    # -- runs ----------------------------------------------------------------
    def write_run(self, row: pa.Table, run_id: str) -> Path:
        """One file per run, replaced atomically as the run's status changes."""
        d = self.table_dir("runs")
        d.mkdir(parents=True, exist_ok=True)
        final = d / f"run-{check_name('run', run_id)}.parquet"
        tmp = d / f".{final.name}.{uuid.uuid4().hex}.tmp"
        write_parquet(row, tmp)
        os.replace(tmp, final)
        return final

    def files(self, table: str) -> list[Path]:
        d = self.table_dir(table)
        return sorted(d.glob("**/*.parquet")) if d.exists() else []

    def clean_staging(self, older_than_s: float = 3600.0) -> None:
        """Remove what crashed runs left in _staging (never visible to readers)."""
        import time

        s = self.root / "_staging"
        if not s.exists():
            return
        now = time.time()
        for p in s.iterdir():
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > older_than_s:
                    shutil.rmtree(p, ignore_errors=True)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write and fsync, so a rename after it never publishes an empty file."""
    try:
        pq.write_table(table, path, compression="zstd")
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StoreError(f"cannot write {path.name}: {e.strerror or e}") from None

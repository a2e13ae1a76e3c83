"""Copy a local Parquet store into a Delta store (local or s3://), partition by partition,
keeping each partition's key and run id, so runs against the new store reuse every stage.

    python -m neurolens.store.migrate neurolens-out/store s3://bucket/prefix/store
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq

from .delta import DeltaStore
from .layout import Store
from .schema import PARTITIONS


def migrate(src: str | Path, dst: str) -> int:
    """Every published partition and run row of `src` into `dst`; returns the partitions copied.
    Safe to run again: a partition already there with the same key is left as it is."""
    old = Store(src)
    if type(old) is not Store:
        raise SystemExit(f"{src} is not a Parquet store")
    new = DeltaStore(dst)
    new.ensure()
    n = 0
    for table, keys in PARTITIONS.items():
        if not keys:
            continue
        for parts in old.partitions(table):
            marker = old.marker(table, parts) or {}
            extra = {k: v for k, v in marker.items() if k not in ("key", "run_id", "files")}
            staged = new.staging()
            try:
                for f in sorted(old.partition_dir(table, parts).glob("*.parquet")):
                    shutil.copy2(f, staged / f.name)
                new.publish(table, parts, staged, key=marker["key"], run_id=marker["run_id"], extra=extra)
            finally:
                shutil.rmtree(staged, ignore_errors=True)
            n += 1
    for f in sorted(old.table_dir("runs").glob("run-*.parquet")):
        new.write_run(pq.read_table(f), f.stem.removeprefix("run-"))
    return n


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(f"{migrate(sys.argv[1], sys.argv[2])} partitions copied")

"""Reading partitions back as arrays: the scoring and ablation stages stream layer by layer."""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neurolens.errors import first_line

from .layout import Store, StoreError


def layers_stored(store: Store, model: str, concept: str) -> list[int]:
    if hasattr(store, "layers"):   # a Delta store: the layers its log holds
        return store.layers(model, concept)
    d = store.partition_dir("activations", {"model": model, "concept": concept, "layer": 0}).parent
    if not d.exists():
        return []
    return sorted(int(p.name.split("=", 1)[1]) for p in d.glob("layer=*") if p.is_dir())


def read_table(store: Store, table: str, parts: dict) -> pa.Table:
    if hasattr(store, "read_partition"):   # a Delta store: the files its log holds
        return store.read_partition(table, parts or {})
    d = store.partition_dir(table, parts)
    for attempt in range(5):
        files = sorted(d.glob("*.parquet"))
        if not files:
            raise StoreError(f"no {table} stored for {', '.join(f'{k}={v}' for k, v in parts.items())}")
        try:
            return pa.concat_tables([pq.read_table(f) for f in files])
        except FileNotFoundError:
            if attempt == 4:
                raise StoreError(f"{table} partition {d.relative_to(store.root)} keeps being "
                                 "replaced by another run; try again") from None
            time.sleep(0.05 * (attempt + 1))  # a concurrent run replaced it: read the new one
        except (pa.ArrowException, OSError) as e:
            raise StoreError(f"corrupt {table} partition {d.relative_to(store.root)}: "
                             f"{first_line(e)}") from None
    raise AssertionError("unreachable")


def read_layer(store: Store, model: str, concept: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(example_ids [n], acts [n, N] float16), ordered by example_id."""
    t = read_table(store, "activations", {"model": model, "concept": concept, "layer": layer})
    ids = t.column("example_id").to_numpy().astype(np.int64)
    col = t.column("acts").combine_chunks()
    width = col.type.list_size
    acts = col.values.to_numpy(zero_copy_only=False).reshape(len(ids), width)
    order = np.argsort(ids, kind="stable")
    return ids[order], acts[order]

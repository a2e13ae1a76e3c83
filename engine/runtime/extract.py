"""Streaming extraction: one forward pass per batch, pooled on the device, fp16 to the store.

Batches are length-sorted once for the whole probe set and dealt round-robin to the
processes of an `accelerate launch`/`torchrun` group, so every batch is exactly the
batch a single process would run: the store's contents do not depend on world size.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from neurolens.engine.models.adapters.base import Adapter
from neurolens.engine.runtime.fast import choices, choices_tag
from neurolens.engine.runtime.hooks import on_sites
from neurolens.engine.runtime.pooling import pool
from neurolens.probes.types import Example, ProbeSet
from neurolens.store import Store, activations_schema, write_parquet

EXTRACT_VERSION = "1"   # unchanged by the in-pass importance: the same pooled values


@dataclass
class Shard:
    """Which part of the work this process does (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None
    broadcast: Callable[[str], str] = lambda s: s
    total: Callable[[int], int] = lambda n: n      # the sum over every process

    @classmethod
    def from_env(cls) -> Shard:
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list, gather_object

        # on CPU, accelerate only forms a process group (gloo) when told it is a CPU job
        st = PartialState(cpu=not torch.cuda.is_available())

        def bcast(s: str) -> str:
            box = [s]
            broadcast_object_list(box, from_process=0)
            return box[0]

        def total(n: int) -> int:
            return int(sum(gather_object([int(n)])))

        # a process that leaves with its gloo group alive can abort in the group's C++
        # destructor ("terminate called without an active exception"); end it first, once
        # per process, at exit: a sweep's runs share the group
        atexit.unregister(_end_group)
        atexit.register(_end_group)
        return cls(st.process_index, st.num_processes, st.wait_for_everyone, bcast, total)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _end_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def model_sha(adapter: Adapter) -> str:
    """Identifies the weights: the hub commit when known, else config + weight file sizes."""
    cfg = getattr(adapter.model, "config", None)   # torchvision models have none
    commit = getattr(cfg, "_commit_hash", None)
    desc = cfg.to_dict() if cfg is not None else {"family": adapter.family, "ref": adapter.ref,
                                                    "shapes": [list(p.shape) for p in adapter.model.parameters()]}
    h = hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode())
    if commit:
        h.update(commit.encode())
    p = Path(adapter.ref)
    if p.is_dir():
        for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def layer_key(msha: str, probe_sha: str, layer: int, pooling: str, dtype: str, kernels: str = "") -> str:
    """What a layer's pooled activations depend on; `kernels` (`fast.choices_tag`) names the
    kernels that computed them, so a store never mixes layers computed on different ones."""
    return f"v{EXTRACT_VERSION}:{msha}:{probe_sha}:{layer}:{pooling}:{dtype}" + (f":k{kernels}" if kernels else "")


def examples_table(examples: Sequence[Example], run_id: str) -> pa.Table:
    span = [e.span for e in examples]
    return pa.table({
        "example_id": pa.array([e.example_id for e in examples], pa.int32()),
        "text": pa.array([e.text if e.text is not None else e.image for e in examples], pa.string()),
        "label": pa.array([e.label for e in examples], pa.int8()),
        "grp": pa.array([e.group for e in examples], pa.string()),
        "split": pa.array([e.split for e in examples], pa.string()),
        "target": pa.array([e.target for e in examples], pa.string()),
        "span_start": pa.array([s[0] if s else None for s in span], pa.int32()),
        "span_end": pa.array([s[1] if s else None for s in span], pa.int32()),
        "pair_id": pa.array([e.pair_id for e in examples], pa.int32()),
        "run_id": pa.array([run_id] * len(examples), pa.string()),
    })


def acts_table(example_ids: np.ndarray, acts: np.ndarray, run_id: str) -> pa.Table:
    n, width = acts.shape
    flat = pa.array(np.ascontiguousarray(acts, dtype=np.float16).reshape(-1), pa.float16())
    return pa.Table.from_arrays(
        [pa.array(example_ids.astype(np.int32)), pa.FixedSizeListArray.from_arrays(flat, width),
         pa.array([run_id] * n, pa.string())],
        schema=activations_schema(width))


@dataclass
class ExtractStats:
    layers: list[int]
    n_examples: int
    tokens: int
    seconds: float
    #: {layer: (example_ids, acts [n, N] fp16)} sorted by id, exactly as published, when this
    #: process extracted every row: scoring takes them from memory instead of the store
    acts: dict[int, tuple[np.ndarray, np.ndarray]] | None = None


def pooled_activations(adapter: Adapter, examples: Sequence[Example], layers: Sequence[int], *,
                       pooling: str = "mean", batch_size: int = 32, shard: Shard | None = None,
                       progress: Callable[[int], None] | None = None, in_pass: Any = None
                       ) -> tuple[np.ndarray, dict[int, torch.Tensor], int]:
    """Pooled activations of `examples` at `layers`: (row indices, {layer: [n, N] fp16}, tokens).
    With a shard, only that process's batches; rows say which examples they are. With
    `in_pass` (one process only), the concept train rows also give their importance
    (`InPass.result`) from the same forward, and a readout probe is fitted on the way."""
    shard = shard or Shard()
    layers = sorted(layers)
    n = len(examples)
    dev = adapter.device
    conf = in_pass.conf if in_pass is not None else None
    readout = conf is not None and not conf.fitted
    grad = in_pass.grad if in_pass is not None else np.zeros(n, dtype=bool)
    feat = (in_pass.train & ~grad) if readout else np.zeros(n, dtype=bool)
    if readout and grad.any():
        toks = sum(b.n_tokens for b in adapter.batches([examples[i] for i in np.flatnonzero(grad)],
                                                       batch_size))
        if in_pass.graph_bytes(adapter, toks, layers) > in_pass.budget:
            feat, grad = in_pass.train.copy(), np.zeros(n, dtype=bool)   # features only
    # plain rows stop after the last site; feature rows run to the features; grad rows backward
    groups = [(k, np.flatnonzero(m)) for k, m in (("plain", ~grad & ~feat), ("feat", feat),
                                                   ("grad", grad))]
    batches = [(k, sub, b) for k, sub in groups if len(sub)
               for b in adapter.batches([examples[i] for i in sub], batch_size,
                                        with_targets=k == "grad" and conf.with_targets)]
    batches = batches[shard.rank::shard.world]
    n_rows = sum(b.size for _, _, b in batches)
    bufs = {l: torch.empty(n_rows, adapter.n_neurons(l), dtype=torch.float16, device=dev) for l in layers}
    rows = np.empty(n_rows, dtype=np.int64)
    # attributions of the concept train rows only (row gpos[i] for example i)
    gpos = np.cumsum(grad) - 1
    attr = {l: np.zeros((int(grad.sum()), adapter.n_neurons(l)), dtype=np.float32)
            for l in layers} if grad.any() else {}
    state: dict = {}

    def grab(layer: int, out: torch.Tensor) -> torch.Tensor | None:
        b, s = state["batch"], state["start"]
        a = out.detach()
        bufs[layer][s:s + b.size] = pool(a, pooling, b.mask, b.concept_mask).to(torch.float16)
        if not state["grad"]:
            return None
        z = torch.zeros_like(out, requires_grad=True)
        state["z"][layer], state["a"][layer] = z, a
        return out + z

    feats, labels, kept = [], [], []
    tokens, start = 0, 0
    for kind, sub, b in batches:
        b = b.to(dev)
        gidx = sub[b.index.numpy()]
        state.update(batch=b, start=start, grad=kind == "grad", z={}, a={})
        if kind == "grad":
            with torch.enable_grad(), on_sites(adapter, layers, grab):
                if readout:
                    f = adapter.features(b)
                    feats.append(f.detach().double().cpu().numpy())
                    labels.append(b.labels.numpy())
                    kept.append((b, gidx, state["z"], state["a"], f))
                else:
                    a_ = in_pass.attributions(b, state["z"], state["a"], conf(b), layers)
                    for l in layers:
                        attr[l][gpos[gidx]] = a_[l]
        else:
            with torch.inference_mode(), on_sites(adapter, layers, grab,
                                                  stop_after=None if kind == "feat" else layers[-1]):
                if kind == "feat":
                    feats.append(adapter.features(b).double().cpu().numpy())
                    labels.append(b.labels.numpy())
                else:
                    adapter.forward(b)
        rows[start:start + b.size] = gidx
        start += b.size
        tokens += b.n_tokens
        if progress:
            progress(b.size)
    if readout and feats:
        conf.fit_features(np.concatenate(feats), np.concatenate(labels))
    while kept:                              # the concept rows' backward, the probe now fitted
        b, gidx, zs, acts, f = kept.pop(0)
        with torch.enable_grad():
            a_ = in_pass.attributions(b, zs, acts, conf.readout(f, b.labels), layers)
        for l in layers:
            attr[l][gpos[gidx]] = a_[l]
        del zs, acts, f
    if in_pass is not None and attr:
        in_pass.result = {l: np.abs(v).astype(np.float64).mean(0) for l, v in attr.items()}
    return rows, bufs, tokens


def extract(adapter: Adapter, probes: ProbeSet, store: Store, *, layers: Sequence[int], run_id: str,
            pooling: str = "mean", dtype: str = "float32", batch_size: int = 32,
            shard: Shard | None = None, progress: Callable[[int], None] | None = None,
            in_pass: Any = None) -> ExtractStats:
    """Extract the layers whose partitions are missing, and publish them atomically.
    `in_pass` is used only when every layer is extracted here, by one process."""
    shard = shard or Shard()
    t0 = time.perf_counter()
    msha = model_sha(adapter)
    ktag = choices_tag(adapter.model)
    parts = {"model": adapter.name, "concept": probes.concept}
    todo = [l for l in layers if not store.is_complete(
        "activations", {**parts, "layer": l}, layer_key(msha, probes.sha, l, pooling, dtype, ktag))]
    if shard.main and not store.is_complete("examples", parts, probes.sha):
        store.write_partition("examples", parts, examples_table(probes.examples, run_id),
                              key=probes.sha, run_id=run_id)
    if not todo:
        return ExtractStats([], len(probes.examples), 0, 0.0)
    if in_pass is not None and (list(todo) != sorted(layers) or shard.world > 1):
        in_pass = None
    rows, bufs, tokens = pooled_activations(adapter, probes.examples, todo, pooling=pooling,
                                            batch_size=batch_size, shard=shard, progress=progress,
                                            in_pass=in_pass)
    ids = np.array([probes.examples[i].example_id for i in rows], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    # every process writes its own files into one staging folder per layer; rank 0 publishes
    stage_root = store.root / "_staging" / f"run-{run_id}"
    kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for l in todo:
        d = stage_root / f"layer={l}"
        d.mkdir(parents=True, exist_ok=True)
        acts = bufs.pop(l).cpu().numpy()[order]  # only pooled fp16 crosses to the host
        write_parquet(acts_table(ids, acts, run_id), d / f"part-{run_id}-r{shard.rank}.parquet",
                      dense="acts")
        if shard.world == 1:
            kept[l] = (ids, acts)
    shard.barrier()
    tokens = shard.total(tokens)    # every process's share, for the runs row
    if shard.main:
        for l in todo:
            store.publish("activations", {**parts, "layer": l}, stage_root / f"layer={l}",
                          key=layer_key(msha, probes.sha, l, pooling, dtype, ktag), run_id=run_id,
                          extra={"world_size": shard.world, "n_neurons": adapter.n_neurons(l),
                                 "kernels": choices(adapter.model)})
        shutil.rmtree(stage_root, ignore_errors=True)
    return ExtractStats(todo, len(probes.examples), tokens, time.perf_counter() - t0, kept or None)

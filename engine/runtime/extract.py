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
    grad, feat = _row_kinds(adapter, examples, layers, batch_size, in_pass)
    batches = _dealt_batches(adapter, examples, grad, feat, batch_size, in_pass, shard)
    p = _Pass(adapter, layers, pooling, batches, grad, in_pass)
    tokens = 0
    for kind, sub, b in batches:
        tokens += p.run(kind, sub, b)
        if progress:
            progress(b.size)
    p.finish()
    return p.rows, p.bufs, tokens


def _row_kinds(adapter: Adapter, examples: Sequence[Example], layers: list[int], batch_size: int,
               in_pass: Any) -> tuple[np.ndarray, np.ndarray]:
    """(grad, feat) row masks: rows that take a backward (the concept train rows, when
    importance is taken in the pass), and rows whose features fit the readout probe."""
    n = len(examples)
    conf = in_pass.conf if in_pass is not None else None
    readout = conf is not None and not conf.fitted
    grad = in_pass.grad if in_pass is not None else np.zeros(n, dtype=bool)
    feat = (in_pass.train & ~grad) if readout else np.zeros(n, dtype=bool)
    if readout and grad.any():
        toks = sum(b.n_tokens for b in adapter.batches([examples[i] for i in np.flatnonzero(grad)],
                                                       batch_size))
        if in_pass.graph_bytes(adapter, toks, layers) > in_pass.budget:
            feat, grad = in_pass.train.copy(), np.zeros(n, dtype=bool)   # features only
    return grad, feat


def _dealt_batches(adapter: Adapter, examples: Sequence[Example], grad: np.ndarray, feat: np.ndarray,
                   batch_size: int, in_pass: Any, shard: Shard) -> list[tuple[str, np.ndarray, Any]]:
    """(kind, example rows, batch) for this process: plain rows stop after the last site,
    feature rows run to the features, grad rows take a backward."""
    groups = [(k, np.flatnonzero(m)) for k, m in (("plain", ~grad & ~feat), ("feat", feat),
                                                   ("grad", grad))]
    batches = [(k, sub, b) for k, sub in groups if len(sub)
               for b in adapter.batches([examples[i] for i in sub], batch_size,
                                        with_targets=k == "grad" and in_pass.conf.with_targets)]
    return batches[shard.rank::shard.world]


class _Pass:
    """One extraction pass: buffers the pooled values, and (with `in_pass`) the features
    for the readout probe and the concept rows' attributions."""

    def __init__(self, adapter: Adapter, layers: list[int], pooling: str, batches: list,
                 grad: np.ndarray, in_pass: Any):
        self.adapter, self.layers, self.pooling, self.in_pass = adapter, layers, pooling, in_pass
        self.conf = in_pass.conf if in_pass is not None else None
        self.readout = self.conf is not None and not self.conf.fitted
        n_rows = sum(b.size for _, _, b in batches)
        dev = adapter.device
        self.bufs = {l: torch.empty(n_rows, adapter.n_neurons(l), dtype=torch.float16, device=dev)
                     for l in layers}
        self.rows = np.empty(n_rows, dtype=np.int64)
        # attributions of the concept train rows only (row gpos[i] for example i)
        self.gpos = np.cumsum(grad) - 1
        self.attr = {l: np.zeros((int(grad.sum()), adapter.n_neurons(l)), dtype=np.float32)
                     for l in layers} if grad.any() else {}
        self.state: dict = {}
        self.feats: list = []
        self.labels: list = []
        self.kept: list = []
        self.start = 0

    def grab(self, layer: int, out: torch.Tensor) -> torch.Tensor | None:
        """The site hook: pool into the buffer; on grad rows, add the zero to differentiate."""
        st = self.state
        b, s = st["batch"], st["start"]
        a = out.detach()
        self.bufs[layer][s:s + b.size] = pool(a, self.pooling, b.mask, b.concept_mask).to(torch.float16)
        if not st["grad"]:
            return None
        z = torch.zeros_like(out, requires_grad=True)
        st["z"][layer], st["a"][layer] = z, a
        return out + z

    def run(self, kind: str, sub: np.ndarray, b) -> int:
        """Run one batch; returns its tokens."""
        adapter, layers = self.adapter, self.layers
        b = b.to(adapter.device)
        gidx = sub[b.index.numpy()]
        self.state.update(batch=b, start=self.start, grad=kind == "grad", z={}, a={})
        if kind == "grad":
            with torch.enable_grad(), on_sites(adapter, layers, self.grab):
                if self.readout:      # the backward waits for the probe: keep the graph
                    f = adapter.features(b)
                    self._features(f.detach(), b)
                    self.kept.append((b, gidx, self.state["z"], self.state["a"], f))
                else:
                    self._attribute(b, gidx, self.state["z"], self.state["a"], self.conf(b))
        else:
            stop = None if kind == "feat" else layers[-1]
            with torch.inference_mode(), on_sites(adapter, layers, self.grab, stop_after=stop):
                if kind == "feat":
                    self._features(adapter.features(b), b)
                else:
                    adapter.forward(b)
        self.rows[self.start:self.start + b.size] = gidx
        self.start += b.size
        return b.n_tokens

    def _features(self, f: torch.Tensor, b) -> None:
        self.feats.append(f.double().cpu().numpy())
        self.labels.append(b.labels.numpy())

    def _attribute(self, b, gidx: np.ndarray, zs: dict, acts: dict, m: torch.Tensor) -> None:
        a_ = self.in_pass.attributions(b, zs, acts, m, self.layers)
        for l in self.layers:
            self.attr[l][self.gpos[gidx]] = a_[l]

    def finish(self) -> None:
        """Fit the readout probe, then the kept concept rows' backwards; the importance."""
        if self.readout and self.feats:
            self.conf.fit_features(np.concatenate(self.feats), np.concatenate(self.labels))
        while self.kept:
            b, gidx, zs, acts, f = self.kept.pop(0)
            with torch.enable_grad():
                self._attribute(b, gidx, zs, acts, self.conf.readout(f, b.labels))
            del zs, acts, f
        if self.in_pass is not None and self.attr:
            self.in_pass.result = {l: np.abs(v).astype(np.float64).mean(0) for l, v in self.attr.items()}


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

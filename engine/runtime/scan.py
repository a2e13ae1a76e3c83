"""Corpus scan: stream excerpts through the model once, folding every batch into a per-layer
`ScanState` on the device (numerics/scan.py), in memory bounded by k x neurons.

The corpus is cut into shards, folded in shard order: in this process into one set of states,
checkpointed after each shard; on a cluster each shard's own states, saved as they arrive and
merged in turn. A scan killed at any point resumes after its last saved shard and publishes
exactly the tables an uninterrupted scan would (the state merge is exact; the float64 moments
are merged in the same fixed order either way). The per-token activations kept are only the
W-token windows around each kept maximum.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from neurolens.engine.models.adapters.base import Adapter, Batch, ModelError
from neurolens.engine.models.adapters.gated import GatedDecoderAdapter
from neurolens.engine.runtime.extract import model_sha
from neurolens.engine.runtime.hooks import on_sites
from neurolens.errors import ProbeError
from neurolens.numerics.scan import EMPTY_KEY, ScanState, edges_from
from neurolens.probes.corpora import Excerpts
from neurolens.store import SCHEMAS, Store, write_parquet

SCAN_VERSION = "1"
QUANTILES = (0.5, 0.9, 0.99, 0.999)


@dataclass(frozen=True)
class ScanSettings:
    k: int = 20
    window: int = 16
    samples: int = 4
    bins: int = 32
    batch_size: int = 16
    calibration: int = 64         # excerpts whose range fixes every neuron's bins

    def tag(self) -> str:
        return f"k{self.k}w{self.window}s{self.samples}b{self.bins}c{self.calibration}"


def is_gated(adapter: Adapter) -> bool:
    return isinstance(adapter, GatedDecoderAdapter)


def _batch(adapter: Adapter, ex: Excerpts, idx: np.ndarray) -> tuple[Batch, torch.Tensor]:
    t = int(ex.lengths[idx].max())
    ids = torch.from_numpy(ex.ids[idx, :t])
    mask = torch.from_numpy((np.arange(t)[None, :] < ex.lengths[idx, None]).astype(np.int64))
    inputs = {"input_ids": ids, "attention_mask": mask}
    if is_gated(adapter):
        inputs["position_ids"] = (mask.cumsum(1) - 1).clamp_min(0)
    b = Batch(inputs=inputs, index=torch.from_numpy(idx), labels=torch.zeros(len(idx), dtype=torch.long),
              mask=mask, n_tokens=int(ex.lengths[idx].sum()))
    return b.to(adapter.device), mask.bool().to(adapter.device)


@contextlib.contextmanager
def _gate_up_hooks(adapter: Adapter, layers: Sequence[int], box: dict) -> Iterator[None]:
    handles = []
    try:
        for l in layers:
            gu = adapter.gate_up(l)
            if gu is None:
                continue
            for name, mod in zip(("gate", "up"), gu):
                handles.append(mod.register_forward_hook(
                    lambda _m, _i, out, l=l, name=name: box.__setitem__((l, name), out.detach())))
        yield
    finally:
        for h in handles:
            h.remove()


def calibrate(adapter: Adapter, ex: Excerpts, layers: Sequence[int], s: ScanSettings
              ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer bins from the corpus's first excerpts: the same for every shard."""
    idx = np.arange(min(s.calibration, len(ex)))
    got: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for lo in range(0, len(idx), s.batch_size):
        b, valid = _batch(adapter, ex, idx[lo:lo + s.batch_size])
        acc: dict[int, torch.Tensor] = {}

        def grab(layer: int, out: torch.Tensor) -> None:
            x = out.detach().float()[valid]
            acc[layer] = torch.stack([x.amin(0), x.amax(0)])

        with torch.inference_mode(), on_sites(adapter, layers, grab, stop_after=max(layers)):
            adapter.forward(b)
        for l, mm in acc.items():
            got[l] = mm if l not in got else torch.stack([torch.minimum(got[l][0], mm[0]),
                                                          torch.maximum(got[l][1], mm[1])])
    return {l: edges_from(mm.unsqueeze(0), bins=s.bins) for l, mm in got.items()}


def empty_states(adapter: Adapter, layers: Sequence[int], edges: dict, s: ScanSettings
                 ) -> dict[int, ScanState]:
    return {l: ScanState.empty(edges[l][0].to(adapter.device), edges[l][1].to(adapter.device), k=s.k,
                               window=s.window, samples=s.samples, gated=is_gated(adapter), bins=s.bins)
            for l in sorted(layers)}


def scan_states(adapter: Adapter, ex: Excerpts, layers: Sequence[int], edges: dict, s: ScanSettings,
                index: np.ndarray | None = None, progress: Callable[[int], None] | None = None,
                into: dict[int, ScanState] | None = None) -> dict[int, ScanState]:
    """One pass over the excerpts `index` (default all): a ScanState per layer, on the device.
    `into` (states of earlier shards) is folded into in place instead, its moments summed apart
    and merged at the end, so it ends equal to merging this pass's own states into it."""
    layers = sorted(layers)
    index = np.arange(len(ex)) if index is None else np.asarray(index)
    states = into if into is not None else empty_states(adapter, layers, edges, s)
    saved = {l: states[l].split_moments() for l in layers} if into is not None else {}
    box: dict = {}
    cur: dict = {}

    def fold(layer: int, out: torch.Tensor) -> None:
        states[layer].update(out.detach(), cur["ids"], cur["valid"], box.pop((layer, "gate"), None),
                             box.pop((layer, "up"), None))

    with torch.inference_mode(), _gate_up_hooks(adapter, layers, box), \
            on_sites(adapter, layers, fold, stop_after=layers[-1]):
        for lo in range(0, len(index), s.batch_size):
            idx = index[lo:lo + s.batch_size]
            b, valid = _batch(adapter, ex, idx)
            cur.update(ids=torch.from_numpy(idx).to(adapter.device), valid=valid)
            adapter.forward(b)
            if progress:
                progress(b.n_tokens)
    for l, st in states.items():
        st.flush()
        if l in saved:
            st.join_moments(saved[l])
    return states


# -- the stage: shards, resume, tables ----------------------------------------------------------
def scan_key(adapter: Adapter, ex: Excerpts, s: ScanSettings, dtype: str) -> str:
    return f"v{SCAN_VERSION}:{model_sha(adapter)}:{ex.sha}:{s.tag()}:{dtype}"


def shard_ranges(n: int, n_shards: int) -> list[np.ndarray]:
    return [a for a in np.array_split(np.arange(n), max(1, min(n_shards, n))) if len(a)]


def default_shards(ex: Excerpts) -> int:
    """About 100k tokens a shard (a kill loses at most one shard's work), 1 to 32 shards."""
    return int(min(32, max(1, ex.n_tokens // 100_000)))


#: a shard's index and the excerpt indices it holds
Shard = tuple[int, np.ndarray]


class ShardRunner(Protocol):
    """Computes the pending shards' states with the driver's `edges` and yields each shard
    once, in any order, as (shard index, {layer: ScanState or its state_dict}); `progress`
    gets the tokens scanned. Where the work runs (this process, a cluster) is the runner's."""

    def __call__(self, ex: Excerpts, layers: list[int], edges: dict, s: ScanSettings,
                 shards: list[Shard], progress: Callable[[int], None] | None
                 ) -> Iterable[tuple[int, Mapping[int, ScanState | dict]]]: ...


def run_scan(adapter: Adapter, ex: Excerpts, store: Store, *, layers: Sequence[int],
             settings: ScanSettings | None = None, n_shards: int | None = None,
             progress: Callable[[int], None] | None = None,
             on_shard: Callable[[int], None] | None = None, runner: ShardRunner | None = None) -> dict:
    """Scan `layers` (those not yet published for this corpus and key) shard by shard, merge in
    shard order and publish corpus_top and neuron_stats per layer.

    Without a `runner`, this process folds every shard into one set of states in place (each
    shard's moments summed apart and merged as a separate shard's would be) and checkpoints
    them after every shard but the last: memory holds one set of states however long the
    corpus. A `runner` (a cluster) computes the shards that have no saved state, each saved as
    it arrives and merged in turn. The tables are the same either way, and a scan resumes from
    either's files."""
    s = settings or ScanSettings()
    if adapter.modality != "text":
        raise ModelError(f"{adapter.name} is a vision model: corpus scans read text")
    if len(ex) < s.k:
        raise ProbeError(f"corpus {ex.corpus} gives {len(ex)} excerpts, fewer than k={s.k}: "
                         "give a longer corpus or more --tokens")
    dtype = str(adapter.dtype).removeprefix("torch.")
    key = scan_key(adapter, ex, s, dtype)
    layers = sorted(layers)
    parts = lambda l: {"model": adapter.name, "corpus": ex.corpus, "layer": l}  # noqa: E731
    todo = [l for l in layers if not (store.is_complete("corpus_top", parts(l), key)
                                      and store.is_complete("neuron_stats", parts(l), key))]
    run_id = "scan-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    if not todo:
        return {"layers": [], "run_id": run_id, "key": key, "tokens": 0}
    n_shards = n_shards or default_shards(ex)
    work = store.root / "_scans" / adapter.name / ex.corpus / \
        hashlib.sha256(f"{key}:{todo}:{n_shards}".encode()).hexdigest()[:16]
    work.mkdir(parents=True, exist_ok=True)
    edges_f = work / "edges.pt"
    if edges_f.exists():
        edges = torch.load(edges_f)
    else:
        edges = calibrate(adapter, ex, todo, s)
        _save(edges, edges_f)
    shards = shard_ranges(len(ex), n_shards)
    files = [work / f"shard-{i:04d}.pt" for i in range(len(shards))]
    merged, done = _checkpoint(work, adapter)
    for i in range(done + 1):
        if progress:
            progress(int(ex.lengths[shards[i]].sum()))
    in_place = runner is None           # this process: every shard folded into one set of states
    pending = [(i, idx) for i, idx in enumerate(shards) if i > done and not files[i].exists()]
    saved = {i for i, f in enumerate(files) if i > done and f.exists()}
    runs = iter(runner(ex, todo, edges, s, pending, progress) if pending and not in_place else ())
    arrived: dict[int, Mapping[int, ScanState | dict]] = {}   # computed ahead of their turn
    tokens = 0
    try:
        for i, idx in enumerate(shards):
            if i <= done:
                continue
            if i in saved:
                got = {l: ScanState.from_state_dict(d, adapter.device) for l, d in torch.load(files[i]).items()}
                if progress:
                    progress(int(ex.lengths[idx].sum()))
            elif in_place:
                merged = scan_states(adapter, ex, todo, edges, s, idx, progress,
                                     into=merged if merged is not None else empty_states(adapter, todo, edges, s))
                tokens += int(ex.lengths[idx].sum())
                got = None
            else:
                while i not in arrived:
                    j, states = next(runs, (None, None))
                    if j is None:
                        raise RuntimeError(f"the shard runner ended without shard {i}")
                    _save({l: st.state_dict() if isinstance(st, ScanState) else st for l, st in states.items()},
                          files[j])
                    tokens += int(ex.lengths[shards[j]].sum())
                    arrived[j] = states
                got = {l: st if isinstance(st, ScanState) else ScanState.from_state_dict(st, adapter.device)
                       for l, st in arrived.pop(i).items()}
            if got is None:
                pass
            elif merged is None:
                merged = dict(got)
            else:            # layer by layer in place: two states alive, the merged and the shard's
                for l in todo:
                    merged[l].merge_(got.pop(l))
            del got
            if in_place and i < len(shards) - 1:
                _save_checkpoint(work, i, merged)
                files[i].unlink(missing_ok=True)
            if on_shard:
                on_shard(i)
    finally:
        close = getattr(runs, "close", None)
        if close:
            close()   # a runner stops (cancels) what it still runs
    assert merged is not None
    vocab = Vocab.of(adapter, ex)
    for l in todo:
        st = merged[l]
        for table, data in (("corpus_top", top_table(st, ex, l, adapter, run_id, vocab)),
                            ("neuron_stats", stats_table(st, l, run_id))):
            staged = store.staging()
            try:
                write_parquet(data, staged / f"part-{run_id}.parquet")
                store.publish(table, parts(l), staged, key=key, run_id=run_id,
                              extra={"n_neurons": st.n_neurons, "tokens": st.n_tokens})
            finally:
                shutil.rmtree(staged, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return {"layers": todo, "run_id": run_id, "key": key, "tokens": tokens}


def _checkpoint(work: Path, adapter: Adapter) -> tuple[dict[int, ScanState] | None, int]:
    """The states merged through the last shard an in-process scan finished, and that shard's
    index (None, -1 where there is none)."""
    got = sorted(work.glob("upto-*.pt"))
    if not got:
        return None, -1
    d = torch.load(got[-1])
    return ({l: ScanState.from_state_dict(x, adapter.device) for l, x in d.items()},
            int(got[-1].stem.split("-")[1]))


def _save_checkpoint(work: Path, i: int, merged: Mapping[int, ScanState]) -> None:
    """Replace the checkpoint with the states merged through shard `i` (one file, not one per
    shard: a resumed scan needs only the latest)."""
    old = list(work.glob("upto-*.pt"))
    _save({l: st.state_dict() for l, st in merged.items()}, work / f"upto-{i:04d}.pt")
    for f in old:
        f.unlink(missing_ok=True)


def _save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# -- tables ---------------------------------------------------------------------------------------
def token_strings(adapter: Adapter, ids: np.ndarray) -> dict[int, str]:
    """Display strings of the given token ids (each decoded alone)."""
    u = np.unique(ids)
    return dict(zip(u.tolist(), adapter.processor.batch_decode([[int(i)] for i in u])))


@dataclass(frozen=True)
class Vocab:
    """The display strings of a corpus's tokens, decoded once per scan: `strings` an Arrow
    array and `code[id]` each id's index in it, so a table's millions of window tokens are one
    Arrow `take` rather than as many Python strings."""
    code: np.ndarray
    strings: pa.Array

    @classmethod
    def of(cls, adapter: Adapter, ex: Excerpts) -> Vocab:
        u = np.unique(ex.ids[np.arange(ex.ids.shape[1])[None, :] < ex.lengths[:, None]])
        code = np.full(int(u.max()) + 1 if len(u) else 1, -1, dtype=np.int64)
        code[u] = np.arange(len(u))
        names = adapter.processor.batch_decode([[int(i)] for i in u]) if len(u) else []
        return cls(code, pa.array(names, pa.string()))

    def take(self, ids: np.ndarray) -> pa.Array:
        return self.strings.take(pa.array(self.code[ids]))


def _list(values: np.ndarray | pa.Array, ok: np.ndarray, typ: pa.DataType) -> pa.Array:
    """Rows of `ok`'s true cells: `values` holds them flat (an Arrow array) or is the full
    [rows, W] array they are picked from."""
    counts = ok.sum(1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    flat = values if isinstance(values, pa.Array) else pa.array(values[ok], typ)
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


def top_table(st: ScanState, ex: Excerpts, layer: int, adapter: Adapter, run_id: str,
              vocab: Vocab | None = None) -> pa.Table:
    """corpus_top rows of one layer: top (and bottom) k with their windows' activations, then
    the interval and random samples (windows' tokens only)."""
    vocab = vocab or Vocab.of(adapter, ex)
    n, nb, s_, w = st.n_neurons, st.n_bins, st.samples, st.window
    lo, scale = st.lo.cpu().numpy(), st.scale.cpu().numpy()
    rows: list[dict] = []
    kk = np.arange(st.k)[:, None].repeat(n, 1).ravel()
    nn_ = np.arange(n)[None, :].repeat(st.k, 0).ravel()
    for kind, pre, sign in (("top", "top", 1.0), ("bottom", "bot", -1.0)):
        v = getattr(st, f"{pre}_val")
        if v is None:
            continue
        v = v.cpu().numpy().ravel()
        win = getattr(st, f"{pre}_win").cpu().numpy().transpose(0, 2, 1).reshape(-1, w)   # [k*N, W]
        rows.append({"kind": kind, "neuron": nn_, "rank": kk, "act": (sign * v).astype(np.float32),
                     "ex": np.where(np.isfinite(v), getattr(st, f"{pre}_ex").cpu().numpy().ravel(), -1),
                     "pos": getattr(st, f"{pre}_pos").cpu().numpy().ravel(),
                     "start": getattr(st, f"{pre}_start").cpu().numpy().ravel(), "win": sign * win})
    key = st.s_key.cpu().numpy().reshape(n, nb * s_)
    sex, sval, spos = (t.cpu().numpy().reshape(n, nb * s_) for t in (st.s_ex, st.s_val, st.s_pos))
    filled = key < EMPTY_KEY
    neur = np.arange(n)[:, None].repeat(nb * s_, 1)
    rows.append({"kind": "interval", "neuron": neur.ravel(), "rank": (np.arange(nb * s_) % s_)[None, :]
                 .repeat(n, 0).ravel(), "act": sval.ravel(), "ex": np.where(filled, sex, -1).ravel(),
                 "pos": spos.ravel(), "start": None, "win": None})
    order = np.argsort(key, axis=1, kind="stable")[:, :s_]              # random: the smallest keys
    r = np.arange(n)[:, None]
    rows.append({"kind": "random", "neuron": neur[:, :s_].ravel(), "rank": np.tile(np.arange(s_), n),
                 "act": sval[r, order].ravel(), "ex": np.where(filled[r, order], sex[r, order], -1).ravel(),
                 "pos": spos[r, order].ravel(), "start": None, "win": None})
    for d in rows:                                                       # drop empty slots
        keep = d["ex"] >= 0
        for c in ("neuron", "rank", "act", "ex", "pos", "start", "win"):
            if d[c] is not None:
                d[c] = d[c][keep]
        d["ex"] = d["ex"].astype(np.int64)
        if d["start"] is None:        # samples: the same window rule as the top rows
            d["start"] = np.minimum(np.maximum(d["pos"] - w // 2, 0), np.maximum(ex.lengths[d["ex"]] - w, 0))
        d["win"] = d["win"] if d["win"] is not None else np.full((len(d["ex"]), w), np.nan, np.float32)
    cat_ = lambda c: np.concatenate([d[c] for d in rows])               # noqa: E731
    neuron, exid, pos, start, act = cat_("neuron"), cat_("ex"), cat_("pos").astype(np.int64), \
        cat_("start").astype(np.int64), cat_("act").astype(np.float32)
    kind_names = pa.array([d["kind"] for d in rows], pa.string())
    kind_code = np.concatenate([np.full(len(d["ex"]), i, dtype=np.int64) for i, d in enumerate(rows)])
    sample = np.isin(kind_code, [i for i, d in enumerate(rows) if d["kind"] in ("interval", "random")])
    win = cat_("win").astype(np.float32)
    p = start[:, None] + np.arange(w)[None, :]
    ok = p < ex.lengths[exid][:, None]
    ids = ex.ids[exid[:, None], np.minimum(p, ex.ids.shape[1] - 1)]
    bins = (np.clip(np.floor((act - lo[neuron]) * scale[neuron]).astype(np.float32), -1, nb - 2) + 1)
    wok = ok & ~sample[:, None]
    word = ex.word[exid, pos]
    cat = ex.cat[exid, pos]
    return pa.table({
        "layer": pa.array(np.full(len(exid), layer, dtype=np.int32)),
        "neuron": pa.array(neuron.astype(np.int32)), "kind": kind_names.take(pa.array(kind_code)),
        "rank": pa.array(cat_("rank").astype(np.int32)), "bin": pa.array(bins.astype(np.int32)),
        "excerpt_id": pa.array(exid), "position": pa.array(pos.astype(np.int32)),
        "activation": pa.array(act), "window_start": pa.array(start.astype(np.int32)),
        "tokens": _list(vocab.take(ids[ok]), ok, pa.string()), "token_acts": _list(win, wok, pa.float32()),
        "word": _names(ex.words, word), "category": _names(ex.categories, cat),
        "run_id": pa.repeat(pa.scalar(run_id, pa.string()), len(exid)),
    }, schema=SCHEMAS["corpus_top"])


def _names(names: Sequence[str], code: np.ndarray) -> pa.Array:
    """names[code] as an Arrow string array, null where code < 0."""
    if len(names) == 0:
        return pa.nulls(len(code), pa.string())
    return pa.array(list(names), pa.string()).take(pa.array(np.where(code >= 0, code, 0), mask=code < 0))


def stats_table(st: ScanState, layer: int, run_id: str) -> pa.Table:
    n = st.n_neurons
    hist = st.hist.cpu().numpy()
    cdf = np.cumsum(hist, 1) / max(st.n_tokens, 1)
    edges = st.edges().cpu().numpy()                                   # [N, B+1]
    upper = np.concatenate([edges, np.full((n, 1), np.inf, dtype=edges.dtype)], 1)   # bin j's top
    qs = np.stack([upper[np.arange(n), np.argmax(cdf >= q - 1e-12, axis=1)] for q in QUANTILES], 1)
    fl = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), a.shape[1]).cast(  # noqa: E731
        pa.list_(pa.from_numpy_dtype(a.dtype)))
    signs = st.signs.cpu().numpy() if st.signs is not None else None
    return pa.table({
        "layer": pa.array(np.full(n, layer, dtype=np.int32)), "neuron": pa.array(np.arange(n, dtype=np.int32)),
        "n_tokens": pa.array(np.full(n, st.n_tokens, dtype=np.int64)),
        "n_excerpts": pa.array(np.full(n, st.n_excerpts, dtype=np.int64)),
        "mean": pa.array(st.mean.cpu().numpy()), "std": pa.array(st.std.cpu().numpy()),
        "frac_active": pa.array(st.active.cpu().numpy() / max(st.n_tokens, 1)),
        "hist_lo": pa.array(st.lo.cpu().numpy()), "hist_width": pa.array((1.0 / st.scale).cpu().numpy()),
        "hist": fl(hist.astype(np.int64)), "hist_max": fl(st.hist_max.cpu().numpy().astype(np.int64)),
        "quantiles": fl(qs.astype(np.float32)),
        "gate_up_signs": fl(signs.astype(np.int64)) if signs is not None else pa.nulls(n, pa.list_(pa.int64())),
        "run_id": pa.array([run_id] * n, pa.string()),
    }, schema=SCHEMAS["neuron_stats"])

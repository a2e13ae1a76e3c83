"""Batched ablation: many neuron sets share one forward pass.

Each batch of examples is stacked R times (`Batch.repeat`), one replica per neuron set,
and a vectorised hook rewrites every ablated site in one tensor operation::

    acts[r] := where(mask[r] & in_range, value, acts[r])        mask: [R, N]

broadcast over positions (text) or over space (vision). So R ablations cost one
forward of R·B rows instead of R forwards of B rows.

Prefix sharing: every replica is identical up to the first site that any of them
ablates. When the adapter's sites live in a stack of blocks (an `nn.ModuleList`, which
holds for every family we support), the batch runs once through the blocks before that
site and is replicated only at the input of the block that holds it, so ablating a
late layer does not pay for the early ones R times. Sets are grouped by their first
layer to make the most of it. Where no block stack is found the whole batch is
replicated at the input, which gives the same numbers.

Branching: where the adapter names the affine module that reads the neurons
(`Adapter.neuron_readout`, the MLP's down-projection) for every ablated layer, no block
runs a replica that another one would compute the same. Ablating neurons S of a set
changes that module's output by exactly -(a_S - v_S) W_S, a rank-|S| term. So a chunk of
sets is a tree: a node is a distinct history of ablations so far, the chunk starts as
one clean node at its first ablated block, and a block that ablates layer l runs once
per node, its readout's output becoming ``out[None] - delta`` ([m, B, T, H] for a node
with m children: its sets' distinct l-ablations, none included), which the residual add
and LayerNorm after it broadcast. Nodes with the same m run the block together. The
random controls are nested (a draw's first j neurons for each control size j), so a
draw's sets run as one replica until the first layer where they differ, and the first
ablated block costs B·T·|S|·H per replica instead of a whole block. Where a site's
output is the whole stream the next block reads (`Adapter.site_is_stream`: ResNet
blocks), the site hook itself widens the batch from B to R·B rows, which gives the
first block's saving with no correction term.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from neurolens.engine.models.adapters.base import Adapter, Batch
from neurolens.engine.runtime.hooks import on_sites
from neurolens.engine.models.placement import resident
from neurolens.probes.types import Example

Neuron = tuple[int, int]
NeuronSet = Sequence[Neuron]
METHODS = ("zero", "mean", "range")

#: activation elements (R·B·T·N at the widest site) one replicated forward may hold: an
#: accelerator wants wide forwards; a CPU is faster when each layer's working set stays
#: near its caches (MiniLM's controls: 9.8 s at 2^22 against 11.2 s at 2^25, 2-core EPYC)
DEFAULT_BUDGET = 1 << 25
CPU_BUDGET = 1 << 22


def default_budget(device: torch.device | str) -> int:
    return CPU_BUDGET if torch.device(device).type == "cpu" else DEFAULT_BUDGET


def _per_layer(spec: Any, layers: Sequence[int], sizes: Mapping[int, int], what: str,
               fill: float) -> dict[int, np.ndarray]:
    """Per-layer dense vectors from {layer: [N]} or {(layer, neuron): x}; `fill` elsewhere."""
    out = {l: np.full(sizes[l], fill, dtype=np.float64) for l in layers}
    if spec is None:
        return out
    for key, v in spec.items():
        if isinstance(key, tuple):
            l, n = int(key[0]), int(key[1])
            if l in out:
                out[l][n] = float(v)
        elif int(key) in out:
            arr = np.asarray(v, dtype=np.float64).reshape(-1)
            if arr.shape[0] != sizes[int(key)]:
                raise ValueError(f"{what} for layer {key} has {arr.shape[0]} entries, "
                                 f"expected {sizes[int(key)]}")
            out[int(key)] = arr
    return out


def _ranges(ranges: Any, layers: Sequence[int], sizes: Mapping[int, int]
            ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """{layer: (lo[N], hi[N])} or {(layer, neuron): (lo, hi)} -> lo, hi per layer."""
    if ranges is None:
        raise ValueError("method 'range' needs ranges (the concept range of every ablated neuron)")
    lo_spec, hi_spec = {}, {}
    for key, (lo, hi) in ranges.items():
        lo_spec[key], hi_spec[key] = lo, hi
    lo = _per_layer(lo_spec, layers, sizes, "range_lo", np.inf)
    hi = _per_layer(hi_spec, layers, sizes, "range_hi", -np.inf)
    return lo, hi


class _Stack:
    """The `nn.ModuleList` of blocks that holds the neuron sites, and which block holds
    each layer's site (several layers may share one: a ResNet stage)."""

    def __init__(self, blocks: list[nn.Module], at: dict[int, int]):
        self.blocks, self.at = blocks, at

    def from_(self, layer: int) -> list[nn.Module]:
        """The block holding `layer` and every block after it."""
        return self.blocks[self.at[layer]:]


def _block_stack(adapter: Adapter, layers: Sequence[int]) -> _Stack | None:
    """The block stack, when every layer's neuron module lies in one block of a single
    `nn.ModuleList` (true of every family we support); None otherwise."""
    try:
        parent_of: dict[int, tuple[nn.ModuleList, nn.Module]] = {}
        for ml in adapter.model.modules():
            if isinstance(ml, nn.ModuleList):
                for blk in ml:
                    parent_of.setdefault(id(blk), (ml, blk))
        stack, at = None, {}
        for l in layers:
            target = adapter.neuron_site(l)[0]
            found = next(((ml, blk) for ml, blk in parent_of.values()
                          if blk is target or any(m is target for m in blk.modules())), None)
            if found is None or (stack is not None and found[0] is not stack):
                return None
            stack = found[0]
            at[l] = next(i for i, b in enumerate(stack) if b is found[1])
        return _Stack(list(stack), at) if stack is not None else None
    except Exception:  # noqa: BLE001 - an unusual model just loses the optimisation
        return None


def _put_back(patched: list[tuple[nn.Module, Any]]) -> None:
    """Undo instance-level `forward` patches: an instance's own forward (accelerate's
    dispatch hooks) is put back, otherwise the class's shows through again."""
    for blk, own in patched:
        if own is None:
            del blk.forward
        else:
            blk.forward = own


@contextmanager
def _clean_prefix(blocks: Sequence[nn.Module], cache: dict[int, Any]):
    """The blocks before the first ablated one compute nothing that differs between
    chunks of the same batch: each returns its output from the batch's first forward
    (`cache`, filled here the first time a block runs)."""
    hs, patched = [], []
    for i, blk in enumerate(blocks):
        if i in cache:
            # an instance-level forward (accelerate's dispatch hooks) is put back afterwards
            patched.append((blk, blk.__dict__.get("forward")))
            blk.forward = lambda *_a, _out=cache[i], **_k: _out
        else:
            hs.append(blk.register_forward_hook(lambda _m, _a, out, i=i: cache.setdefault(i, out)))
    try:
        yield
    finally:
        for h in hs:
            h.remove()
        _put_back(patched)


@contextmanager
def _replicate_at(blocks: Sequence[nn.Module], rows: int, r: int):
    """Repeat every batch-leading tensor entering these blocks r times (replica-major)."""
    def pre(_mod, args, kwargs):
        return _repeat_rows(args, rows, r), {k: _repeat_rows(v, rows, r) for k, v in kwargs.items()}

    hs = [b.register_forward_pre_hook(pre, with_kwargs=True) for b in blocks]
    try:
        yield
    finally:
        for h in hs:
            h.remove()


def _token_mean(a: torch.Tensor, tokens: torch.Tensor, axis: int) -> torch.Tensor:
    """Mean of `a` over the real tokens (`tokens`: [B, T] 0/1) along `axis`, whose batch
    axis is the one before it; kept as a size-1 axis. The pooled value the concept range
    was measured on."""
    shape = [1] * a.dim()
    shape[axis - 1], shape[axis] = tokens.shape
    t = tokens.view(shape).to(a.dtype)
    return (a * t).sum(axis, keepdim=True) / t.sum(axis, keepdim=True).clamp_min(1.0)


def _readout_rows(adapter: Adapter, layer: int) -> tuple[nn.Module, torch.Tensor] | None:
    """(the module reading layer `layer`'s neurons, its weight as [N, H] rows), if any."""
    mod = adapter.neuron_readout(layer)
    if mod is None:
        return None
    weight = resident(mod)                            # also when offloaded by --device-map
    if weight is None:
        return None
    if isinstance(mod, nn.Linear):
        w = weight.t()
    elif any(c.__name__ == "Conv1D" for c in type(mod).__mro__):   # transformers' GPT-2 layer: x @ W + b
        w = weight
    else:
        return None
    return (mod, w) if w.shape[0] == adapter.n_neurons(layer) else None


class _Group:
    """Parents of one branching block with the same number m of children: they run the
    block together and leave it as m·g rows, child j of parent p getting the correction
    for neurons `idx[j, p]` (`fix`; None where no child ablates anything here)."""

    def __init__(self, parents: list[int], n_parents: int, fix: dict | None):
        self.g, self.fix = len(parents), fix
        self.parents = None if parents == list(range(n_parents)) else torch.tensor(parents)


class _Branches:
    """How one chunk of sets branches, block by block (module docstring: "Branching").

    A node is a distinct history of ablations so far; each chunk starts as one clean node
    at the input of its first ablated block. At a block that ablates layer l, a node's
    children are the distinct l-ablations of its sets (none is a child too). After the
    last such block every node is one set: `leaf[c]` is the row of the chunk's c-th set.
    With ``share=False`` a set is a node of its own from its first ablation on (the cost of
    fanning out the first ablated block alone; a switch for benchmarks)."""

    def __init__(self, plan: _Plan, stack: _Stack, readouts: dict, sets: Sequence[NeuronSet],
                 share: bool = True):
        layer_at = {stack.at[l]: l for l in plan.layers}
        used = sorted({int(l) for s in sets for l, _ in s})
        self.start = min(stack.at[l] for l in used)
        keys: list[tuple] = [()] * len(sets)
        nodes: list[tuple] = [()]
        self.steps: dict[int, tuple[int, list[_Group]]] = {}
        for i in sorted(stack.at[l] for l in used):
            l = layer_at[i]
            adds = [tuple(sorted(n for ll, n in s if ll == l)) for s in sets]
            kids: dict[tuple, dict[tuple, tuple]] = {p: {} for p in nodes}
            for c, (k, a) in enumerate(zip(keys, adds)):
                if a:
                    keys[c] = k + ((l, a),) if share or k else ((l, a), ("set", c))
                kids[k].setdefault(keys[c], a)
            by_m: dict[int, list[int]] = {}
            for pi, p in enumerate(nodes):
                by_m.setdefault(len(kids[p]), []).append(pi)
            groups, order = [], []
            for m, pis in sorted(by_m.items()):
                rows = [list(kids[nodes[pi]].items()) for pi in pis]
                groups.append(_Group(pis, len(nodes),
                                     _fix(plan, readouts[l], l, [[r[j][1] for r in rows] for j in range(m)])))
                order += [r[j][0] for j in range(m) for r in rows]
            self.steps[i] = (l, groups)
            nodes = order
        pos = {k: i for i, k in enumerate(nodes)}
        self.leaf = [pos[k] for k in keys]
        self.n_leaves = len(nodes)


def _fix(plan: _Plan, readout: tuple[nn.Module, torch.Tensor], layer: int,
         adds: list[list[tuple[int, ...]]]) -> dict | None:
    """The correction tensors of one group: adds[j][p] = the neurons child j of parent p
    ablates at `layer`. None if no child ablates anything."""
    m, g = len(adds), len(adds[0])
    k = max(len(a) for row in adds for a in row)
    if k == 0:
        return None
    rows = readout[1]
    idx = torch.zeros(m, g, k, dtype=torch.long)
    valid = torch.zeros(m, g, k, dtype=torch.bool)
    for j, row in enumerate(adds):
        for p, a in enumerate(row):
            idx[j, p, :len(a)] = torch.tensor(a, dtype=torch.long)
            valid[j, p, :len(a)] = True
    idx, valid = idx.to(rows.device), valid.to(rows.device)

    def at(vec: torch.Tensor) -> torch.Tensor:     # [m, g, k] -> [g, 1, 1, m, k], 0 where unused
        v = torch.where(valid, vec.to(rows.device)[idx], torch.zeros((), device=rows.device))
        return v.permute(1, 0, 2)[:, None, None]
    fix = dict(m=m, g=g, k=k, gather=idx.permute(1, 0, 2).reshape(g, m * k),
               w=rows[idx].float() * valid[..., None], val=at(plan.values[layer]))
    if plan.method == "range":
        fix["lo"], fix["hi"] = at(plan.lo[layer]), at(plan.hi[layer])
    return fix


def _correct(fix: dict, method: str, tokens: torch.Tensor | None, range_on: str,
             acts: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The readout's output for every child: ``out - (a_S - v_S) W_S``, [m, g·B, T, H]."""
    m, g, k = fix["m"], fix["g"], fix["k"]
    dev = acts.device         # the readout's weight may live elsewhere (--device-map offload)
    n = acts.shape[-1]
    flat = acts.reshape(g, -1, n)
    a = flat.gather(2, fix["gather"].to(dev)[:, None, :].expand(g, flat.shape[1], m * k))
    a = a.view(g, out.shape[0] // g, *out.shape[1:-1], m, k).float()          # [g, B, T, m, k]
    d = a - fix["val"].to(dev)
    if method == "range":
        lo, hi = fix["lo"].to(dev), fix["hi"].to(dev)
        if range_on == "position":
            d = d * ((a >= lo) & (a <= hi))
        else:   # the example's pooled activation, as in `_hook`
            p = _token_mean(a, tokens, axis=2)
            d = d * ((p >= lo) & (p <= hi))
    delta = torch.einsum("gbtmk,mgkh->mgbth", d, fix["w"].to(dev))
    y = out.view(g, -1, *out.shape[1:]).unsqueeze(0) - delta.to(out.dtype)
    return y.reshape(m, g * y.shape[2], *out.shape[1:])


def _repeat_rows(x: Any, rows: int, r: int) -> Any:
    """x with every batch-leading tensor (first axis `rows`) repeated r times, replica-major."""
    if r == 1:
        return x
    if torch.is_tensor(x) and x.dim() >= 2 and x.shape[0] == rows:
        return x.repeat(r, *([1] * (x.dim() - 1)))
    if isinstance(x, tuple):
        return tuple(_repeat_rows(y, rows, r) for y in x)
    return x


@contextmanager
def _branching(tree: _Branches, stack: _Stack, readouts: dict, rows: int, method: str,
               tokens: torch.Tensor | None, range_on: str):
    """Run the blocks from the chunk's first ablated one on its nodes: a block that
    ablates a layer runs once per group of parents and its readout's output fans out to
    the children; every other block runs on the rows it gets, with the batch's other
    tensors (the attention mask, ...) repeated to match."""
    live: dict[int, dict] = {}

    def readout_hook(layer):
        def hook(_mod, args, out):
            fix = live.get(layer)
            return None if fix is None else _correct(fix, method, tokens, range_on, args[0], out)
        return hook

    def forward(orig, step, *args, **kw):
        if args:
            hidden, args = args[0], args[1:]
        else:
            hidden = kw.pop("hidden_states")
        n = hidden.shape[0] // rows
        rep = lambda r: ({k: _repeat_rows(v, rows, r) for k, v in kw.items()},  # noqa: E731
                         _repeat_rows(args, rows, r))
        if step is None:
            k2, a2 = rep(n)
            return orig(hidden, *a2, **k2)
        layer, groups = step
        outs, res = [], None
        for grp in groups:
            h = hidden if grp.parents is None else \
                hidden.view(n, rows, *hidden.shape[1:])[grp.parents].reshape(grp.g * rows, *hidden.shape[1:])
            k2, a2 = rep(grp.g)
            live[layer] = grp.fix
            try:
                res = orig(h, *a2, **k2)
            finally:
                live.clear()
            y = res[0] if isinstance(res, tuple) else res
            outs.append(y.reshape(-1, *y.shape[2:]) if y.dim() == h.dim() + 1 else y)
        y = outs[0] if len(outs) == 1 else torch.cat(outs)
        return (y, *res[1:]) if isinstance(res, tuple) else y

    hs = [readouts[l][0].register_forward_hook(readout_hook(l))
          for l in {step[0] for step in tree.steps.values()}]
    patched = []
    for i in range(tree.start, len(stack.blocks)):
        blk = stack.blocks[i]
        patched.append((blk, blk.__dict__.get("forward")))
        blk.forward = functools.partial(forward, blk.forward, tree.steps.get(i))
    try:
        yield
    finally:
        for h in hs:
            h.remove()
        _put_back(patched)


def _width(adapter: Adapter, layers: Sequence[int]) -> int:
    return max(adapter.n_neurons(l) for l in layers) if layers else 1


class _Plan:
    """Dense per-layer masks, values and ranges on the model's device."""

    def __init__(self, adapter: Adapter, sets: Sequence[NeuronSet], method: str, values: Any,
                 ranges: Any):
        if method not in METHODS:
            raise ValueError(f"unknown ablation method {method!r}; choose from {', '.join(METHODS)}")
        self.layers = sorted({int(l) for s in sets for l, _ in s})
        self.sizes = {l: adapter.n_neurons(l) for l in self.layers}
        dev = adapter.device
        self.method = method
        for s in sets:
            for l, n in s:
                if not 0 <= n < self.sizes[int(l)]:
                    raise ValueError(f"neuron L{l}.N{n} is out of range (layer {l} has {self.sizes[int(l)]})")
        if method == "zero":
            vals = {l: np.zeros(self.sizes[l]) for l in self.layers}
        else:
            if values is None:
                raise ValueError(f"method {method!r} needs values (the replacement activation)")
            vals = _per_layer(values, self.layers, self.sizes, "values", np.nan)
            for s in sets:
                for l, n in s:
                    if not np.isfinite(vals[int(l)][n]):
                        raise ValueError(f"no replacement value for neuron L{l}.N{n}")
        self.values = {l: torch.tensor(v, dtype=torch.float32, device=dev) for l, v in vals.items()}
        self.lo = self.hi = None
        if method == "range":
            lo, hi = _ranges(ranges, self.layers, self.sizes)
            self.lo = {l: torch.tensor(v, dtype=torch.float32, device=dev) for l, v in lo.items()}
            self.hi = {l: torch.tensor(v, dtype=torch.float32, device=dev) for l, v in hi.items()}
        self.first = [min((int(l) for l, _ in s), default=None) for s in sets]

    def masks(self, sets: Sequence[NeuronSet], device) -> dict[int, torch.Tensor]:
        m = {l: torch.zeros(len(sets), self.sizes[l], dtype=torch.bool) for l in self.layers}
        for r, s in enumerate(sets):
            for l, n in s:
                m[int(l)][r, int(n)] = True
        return {l: v.to(device) for l, v in m.items() if v.any()}


def _hook(plan: _Plan, masks: dict[int, torch.Tensor], r: int, tokens: torch.Tensor | None,
          range_on: str, widen: int | None = None) -> Callable:
    """The vectorised rewrite of every replica's sites. At layer `widen` the activations
    arrive for the B examples once and leave as R·B rows (see `Adapter.site_is_stream`).

    `zero` and `mean` write the few ablated (replica, neuron) columns in place, one
    indexed store; only `range` needs a test over every element."""
    where = {l: m.nonzero(as_tuple=True) for l, m in masks.items()} if plan.method != "range" else {}

    def fn(layer: int, acts: torch.Tensor) -> torch.Tensor | None:
        mask = masks.get(layer)
        if mask is None:
            return None
        if layer == widen:
            a = acts.unsqueeze(0).expand(r, *acts.shape)
        else:
            a = acts.reshape(r, acts.shape[0] // r, *acts.shape[1:])
        if layer in where:
            rr, nn_ = where[layer]
            if layer == widen:
                a = a.contiguous()                 # the replicas get storage of their own
            val = plan.values[layer][nn_].to(a.dtype)
            if a.dim() == 5:                       # vision [R, B, C, H, W]
                a[rr, :, nn_] = val.view(-1, 1, 1, 1)
            else:                                  # text [R, B, T, N]
                a[rr, :, :, nn_] = val.view(-1, 1, 1)
            return a.reshape(r * a.shape[1], *a.shape[2:])
        shape = [r] + [1] * (a.dim() - 1)
        if a.dim() == 5:                         # vision [R, B, C, H, W]: channel axis 2
            shape[2] = mask.shape[1]
            vshape = (-1, 1, 1)
        else:                                    # text [R, B, T, N]: neuron axis last
            shape[-1] = mask.shape[1]
            vshape = (-1,)
        m = mask.view(shape)
        val = plan.values[layer].view(vshape).to(a.dtype)
        if plan.method == "range":
            af = a.float()
            lo, hi = plan.lo[layer].view(vshape), plan.hi[layer].view(vshape)
            if range_on == "position":
                m = m & (af >= lo) & (af <= hi)
            else:  # the example's pooled activation, as the range itself was measured
                if af.dim() == 5:
                    p = af.mean(dim=(3, 4), keepdim=True)                    # [R, B, C, 1, 1]
                else:
                    p = _token_mean(af, tokens, axis=2)                        # [R, B, 1, N]
                m = m & (p >= lo) & (p <= hi)
        out = torch.where(m, val, a)
        return out.reshape(r * out.shape[1], *out.shape[2:])
    return fn


def _rows_per_forward(adapter: Adapter, batch: Batch, width: int, budget: int) -> int:
    if batch.mask is not None:
        per = batch.mask.shape[1] * width
    else:
        x = next(iter(batch.inputs.values()))
        per = width * max(1, int(np.prod(x.shape[2:])) // 4)   # rough: a block's output map
    return max(1, budget // max(1, per))


@torch.no_grad()
def ablate_sets(adapter: Adapter, conf, examples: Sequence[Example], sets: Sequence[NeuronSet], *,
                method: str = "zero", values: Any = None, ranges: Any = None,
                batch_size: int = 32, replicas: int | None = None, share_prefix: bool = True,
                budget: int | None = None, range_on: str = "pooled", fan_out: bool = True,
                share_branches: bool = True, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """[n_sets, n_examples] confidences M with each set of (layer, neuron) ablated.

    method: ``zero`` (a := 0), ``mean`` (a := values) or ``range`` (a := values where
    ranges[0] <= a <= ranges[1]; with ``range_on="pooled"`` (default) a is the example's
    mean-pooled activation, the quantity the concept range was measured on, and the
    whole example's activation is replaced; with ``"position"`` each position is tested
    on its own). `values` is {layer: [N]} or {(layer, neuron): x};
    `ranges` is {layer: (lo[N], hi[N])} or {(layer, neuron): (lo, hi)}. An empty set
    gives the unablated confidence. `replicas` sets how many sets share one forward
    (default: as many as fit `budget` activation elements at the widest site; the
    budget defaults to `default_budget` of the model's device).
    `share_prefix`, `fan_out` and `share_branches` (see the module docstring) change the
    cost, never the numbers; they are switches for tests and benchmarks.
    """
    if range_on not in ("pooled", "position"):
        raise ValueError(f"range_on must be 'pooled' or 'position', got {range_on!r}")
    sets = [list(s) for s in sets]
    out = np.zeros((len(sets), len(examples)), dtype=np.float64)
    if not sets or not examples:
        return out
    run = _Run.of(adapter, sets, method, values, ranges, share_prefix, fan_out, budget)
    trees: dict[tuple[int, ...], _Branches] = {}
    for b in adapter.batches(examples, batch_size, with_targets=conf.with_targets):
        b = b.to(adapter.device)
        idx = b.index.numpy()
        R = replicas or max(1, _rows_per_forward(adapter, b, run.width, run.budget) // b.size)
        cache: dict[int, Any] = {}          # clean block outputs of this batch
        for chunk in run.chunks(R):
            if run.branch and any(run.plan.first[i] is not None for i in chunk):
                key = tuple(chunk)
                if key not in trees:
                    trees[key] = _Branches(run.plan, run.stack, run.readouts, [sets[i] for i in chunk],
                                           share=share_branches)
                m, leaves = _forward_branched(run, trees[key], conf, b, cache, method, range_on)
            else:
                m, leaves = _forward_replicated(run, chunk, conf, b, cache, fan_out, range_on)
            _store(out, chunk, idx, m, len(leaves), b.size, leaves)
        if progress:
            progress(b.size)
    return out


@dataclass
class _Run:
    """What one `ablate_sets` call decides before its first forward: the plan, the block
    stack the replicas start from, the readouts that fan out, and the order of the sets."""
    adapter: Adapter
    sets: list[list[tuple[int, int]]]
    plan: _Plan
    stack: Any
    readouts: dict
    branch: bool
    width: int
    budget: int
    order: list[int]

    @classmethod
    def of(cls, adapter: Adapter, sets, method, values, ranges, share_prefix: bool, fan_out: bool,
           budget: int | None) -> _Run:
        plan = _Plan(adapter, sets, method, values, ranges)
        stack = _block_stack(adapter, plan.layers) if share_prefix and plan.layers else None
        readouts = {}
        if stack is not None and fan_out:
            readouts = {l: ro for l in plan.layers if (ro := _readout_rows(adapter, l)) is not None}
        # branching: every ablated layer has a readout and a block of its own (text families)
        branch = (bool(readouts) and len(readouts) == len(plan.layers)
                  and len({stack.at[l] for l in plan.layers}) == len(plan.layers))
        if branch:      # sets that share their early ablations side by side: they share nodes
            order = sorted(range(len(sets)), key=lambda i: tuple(
                tuple(sorted(n for l, n in sets[i] if l == x)) for x in plan.layers))
        else:           # grouped by first ablated layer: the shared prefix is as long as possible
            order = sorted(range(len(sets)), key=lambda i: (plan.first[i] if plan.first[i] is not None else -1))
        return cls(adapter, sets, plan, stack, readouts, branch, _width(adapter, plan.layers),
                   budget or default_budget(adapter.device), order)

    def chunks(self, R: int) -> Iterator[list[int]]:
        """The sets in `order`, at most R per forward; without branching, a chunk's sets
        share their first ablated layer (their common clean prefix)."""
        s = 0
        while s < len(self.order):
            first = self.plan.first[self.order[s]]
            chunk = [self.order[s]]
            while (len(chunk) < R and s + len(chunk) < len(self.order)
                   and (self.stack is None or self.branch or self.plan.first[self.order[s + len(chunk)]] == first)):
                chunk.append(self.order[s + len(chunk)])
            s += len(chunk)
            yield chunk


def _forward_branched(run: _Run, tree: _Branches, conf, b, cache: dict, method: str,
                      range_on: str) -> tuple[torch.Tensor, Sequence[int]]:
    """One forward of a branch tree: the clean prefix once, then a node per distinct
    ablation; returns the confidences and which leaf row each set reads."""
    with _clean_prefix(run.stack.blocks[:tree.start], cache), \
            _branching(tree, run.stack, run.readouts, b.size, method, b.mask, range_on):
        m = conf(b.repeat(tree.n_leaves, inputs=False))
    return m, tree.leaf


def _forward_replicated(run: _Run, chunk: list[int], conf, b, cache: dict, fan_out: bool,
                        range_on: str) -> tuple[torch.Tensor, Sequence[int]]:
    """One forward of r = len(chunk) replicas of the batch, replica i with set chunk[i]
    ablated; the replicas start at the ablated site (widen), the ablated block's input
    (prefix) or the model's input."""
    adapter, plan, stack = run.adapter, run.plan, run.stack
    first = plan.first[chunk[0]]
    r = len(chunk)
    masks = plan.masks([run.sets[i] for i in chunk], adapter.device)
    many = first is not None and r > 1
    mode = ("widen" if many and fan_out and adapter.site_is_stream else
            "prefix" if many and stack is not None else "input")
    rb = b.repeat(r, inputs=mode == "input")
    with ExitStack() as st:
        if stack is not None and first is not None:
            st.enter_context(_clean_prefix(stack.blocks[:stack.at[first]], cache))
        if mode == "prefix":
            st.enter_context(_replicate_at(stack.from_(first), b.size, r))
        if masks:
            widen = first if mode == "widen" else None
            st.enter_context(on_sites(adapter, sorted(masks), _hook(plan, masks, r, b.mask, range_on, widen)))
        m = conf(rb)
    return m, range(r)


def _store(out: np.ndarray, chunk: Sequence[int], idx: np.ndarray, m: torch.Tensor, r: int, rows: int,
           leaf: Sequence[int]) -> None:
    """out[chunk[c], idx] = row block leaf[c] of the r·rows confidences m."""
    if m.shape[0] != r * rows:
        raise RuntimeError(f"ablation forward returned {m.shape[0]} rows, expected {r * rows}")
    m = m.float().view(r, rows).cpu().numpy()
    out[np.asarray(chunk)[:, None], idx[None, :]] = m[np.asarray(leaf)]


def base_confidence(adapter: Adapter, conf, examples: Sequence[Example], *,
                    batch_size: int = 32) -> np.ndarray:
    """[n_examples] confidences with nothing ablated."""
    return ablate_sets(adapter, conf, examples, [[]], batch_size=batch_size)[0]


def relative_drop(base: np.ndarray, ablated: np.ndarray) -> np.ndarray:
    """(mean base − mean ablated) / mean base over the last axis (examples)."""
    b = float(np.mean(base))
    return (b - np.mean(ablated, axis=-1)) / b if b > 0 else np.full(np.shape(ablated)[:-1], np.nan)

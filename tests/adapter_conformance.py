"""The adapter contract as one check, in the spirit of scikit-learn's `check_estimator`.

`check_adapter(factory, examples)` loads a model through `factory(**placement)` and checks
what every family must honour for extraction, importance, ablation and labels (written
once against `Adapter`) to be right for it:

* ``site``: the values read at each layer's site (`Adapter.neuron_site`, through the
  engine's hooks) equal a plain PyTorch computation of that layer's neuron from the
  model's own modules, with no hook anywhere (`REFERENCES`, one per family);
* ``padding``: an example's pooled values (every pooling) and its readout features are
  the same alone as in a padded, length-sorted batch (the adapter's masks are right);
* ``importance``: the attribution a·∂M/∂a summed over positions equals the finite
  difference of M when the neuron is scaled by 1 ± ε at every position;
* ``ablation``: `ablate_sets` (replicas, shared prefixes, branches) equals one plain
  forward per set with the set's neurons rewritten;
* ``confidence``: the readout probe is fitted on the train split only (changing the test
  split's labels changes nothing) and ablation is measured on the test split;
* ``offload``: the model loaded with ``device_map="auto"`` and a CPU budget of a third of
  its weights (the rest on disk) gives the same pooled values and ablations; a loader
  that cannot place a model must refuse with one `ModelError` that names --device-map.

A new family is its adapter file, an entry in `REFERENCES` and one line calling
`check_adapter` in tests/test_adapter_conformance.py. A failed property raises
`ConformanceError` naming it; the return value says how each check went.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from neurolens.engine.causal.ablation.executor import ablate_sets
from neurolens.engine.causal.ablation.stage import ablation_examples
from neurolens.engine.causal.confidence import Confidence
from neurolens.engine.causal.importance import attributions
from neurolens.engine.models.adapters.base import Adapter, Batch, ModelError
from neurolens.engine.runtime.extract import pooled_activations
from neurolens.engine.runtime.hooks import on_sites
from neurolens.engine.runtime.pooling import POOLINGS
from neurolens.probes.types import Example, ProbeSet

Factory = Callable[..., Adapter]
Reference = Callable[[Adapter, Batch], dict[int, torch.Tensor]]


class ConformanceError(AssertionError):
    """An adapter breaks one property of the contract (`check` names it)."""

    def __init__(self, check: str, message: str):
        super().__init__(f"{check}: {message}")
        self.check = check


# -- plain computations of each family's neurons (no hooks) ------------------------------
def _causal_mask(t: int, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, T, T] additive mask: a position sees itself and what precedes it."""
    m = torch.full((t, t), torch.finfo(dtype).min, dtype=dtype).triu(1)
    return m[None, None]


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _gpt2(adapter: Adapter, b: Batch) -> dict[int, torch.Tensor]:
    """gelu(c_fc(ln_2(h + attn(ln_1(h))))) for each block, h its input."""
    base = getattr(adapter.model, "transformer", adapter.model)
    hs = base(**b.inputs, output_hidden_states=True).hidden_states
    out = {}
    for l, blk in enumerate(base.h):
        h = hs[l]
        x = h + _first(blk.attn(blk.ln_1(h), attention_mask=_causal_mask(h.shape[1], h.dtype)))
        out[l] = blk.mlp.act(blk.mlp.c_fc(blk.ln_2(x)))
    return out


def _bert(adapter: Adapter, b: Batch) -> dict[int, torch.Tensor]:
    """act(dense(attention(h))) for each layer, h its input (BERT and RoBERTa)."""
    m = adapter.model
    base = getattr(m, "bert", None) or getattr(m, "roberta", None) or m
    hs = base(**b.inputs, output_hidden_states=True).hidden_states
    out = {}
    for l, layer in enumerate(base.encoder.layer):
        a = _first(layer.attention(hs[l]))
        out[l] = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(a))
    return out


def _gated(adapter: Adapter, b: Batch) -> dict[int, torch.Tensor]:
    """act(gate(y)) * up(y), y = post_attention_norm(h + attn(input_norm(h)))."""
    base = getattr(adapter.model, "model", adapter.model)
    inputs = {k: v for k, v in b.inputs.items() if k != "position_ids"}
    hs = base(**inputs, output_hidden_states=True, use_cache=False).hidden_states
    t = hs[0].shape[1]
    pos = torch.arange(t, device=hs[0].device)[None]
    out = {}
    for l, layer in enumerate(base.layers):
        h = hs[l]
        pe = base.rotary_emb(h, pos)
        a = _first(layer.self_attn(hidden_states=layer.input_layernorm(h), position_embeddings=pe,
                                   attention_mask=_causal_mask(t, h.dtype)))
        y = layer.post_attention_layernorm(h + a)
        mlp = layer.mlp
        out[l] = mlp.act_fn(mlp.gate_proj(y)) * mlp.up_proj(y)
    return out


def _resnet(adapter: Adapter, b: Batch) -> dict[int, torch.Tensor]:
    """Each residual block's output, running the stem and the blocks in order
    (transformers' ResNet, or torchvision's where the model has `layer1..4`)."""
    m = adapter.model
    if hasattr(m, "layer1"):
        x = m.maxpool(m.relu(m.bn1(m.conv1(b.inputs["x"]))))
        blocks = [blk for st in (m.layer1, m.layer2, m.layer3, m.layer4) for blk in st]
    else:
        base = getattr(m, "resnet", m)
        x = base.embedder(b.inputs["pixel_values"])
        blocks = [blk for stage in base.encoder.stages for blk in stage.layers]
    out = {}
    for l, blk in enumerate(blocks):
        x = out[l] = blk(x)
    return out


#: family -> the plain computation of its neurons at every layer, for one unpadded example
REFERENCES: dict[str, Reference] = {"gpt2": _gpt2, "bert": _bert, "roberta": _bert, "llama": _gated,
                                     "resnet": _resnet}


# -- the checks ---------------------------------------------------------------------------
def _close(check: str, got, want, *, rtol: float, atol: float, what: str) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise ConformanceError(check, f"{what}: shape {got.shape} != {want.shape}")
    bad = ~np.isclose(got, want, rtol=rtol, atol=atol)
    if bad.any():
        i = np.unravel_index(np.argmax(np.abs(got - want)), got.shape)
        raise ConformanceError(check, f"{what}: {int(bad.sum())} of {bad.size} values differ "
                                      f"(worst at {tuple(map(int, i))}: {got[i]:.6g} vs {want[i]:.6g})")


def check_site(adapter: Adapter, examples: Sequence[Example], reference: Reference) -> None:
    """Hooked site values == the family's plain computation, at every position and layer."""
    layers = list(range(adapter.n_layers))
    for e in examples:
        b = next(adapter.batches([e], 1)).to(adapter.device)
        got: dict[int, torch.Tensor] = {}
        with torch.no_grad(), on_sites(adapter, layers, lambda l, a: got.setdefault(l, a.detach().clone())):
            adapter.forward(b)
        with torch.no_grad():
            want = reference(adapter, b)
        for l in layers:
            if l not in got:
                raise ConformanceError("site", f"layer {l}'s site never ran")
            _close("site", got[l].float().cpu(), want[l].float().cpu(), rtol=1e-4, atol=1e-5,
                   what=f"layer {l}, example {e.example_id}")


def _by_row(rows: np.ndarray, acts: dict[int, torch.Tensor]) -> dict[int, np.ndarray]:
    order = np.argsort(rows)
    return {l: a.float().cpu().numpy()[order] for l, a in acts.items()}


def check_padding(adapter: Adapter, examples: Sequence[Example]) -> None:
    """Pooled values and readout features alone == in one padded batch, for every pooling."""
    layers = list(range(adapter.n_layers))
    if adapter.modality == "text":
        lengths = next(adapter.batches(examples, len(examples))).inputs["attention_mask"].sum(1)
        if int(lengths.min()) == int(lengths.max()):
            raise ValueError("check_adapter needs examples of different lengths")
    poolings = POOLINGS if adapter.modality == "text" else ("mean", "max")
    for how in poolings:
        alone = _by_row(*pooled_activations(adapter, examples, layers, pooling=how, batch_size=1)[:2])
        together = _by_row(*pooled_activations(adapter, examples, layers, pooling=how,
                                               batch_size=len(examples))[:2])
        for l in layers:
            # fp16 as stored: one rounding step of the larger value apart at most
            _close("padding", together[l], alone[l], rtol=2e-3, atol=2e-3,
                   what=f"{how} pooling, layer {l}")
    with torch.no_grad():
        one = {int(b.index[0]): adapter.features(b.to(adapter.device)).cpu()[0]
               for b in adapter.batches(examples, 1)}
        for b in adapter.batches(examples, len(examples)):
            f = adapter.features(b.to(adapter.device)).cpu()
            for r, i in enumerate(b.index.tolist()):
                _close("padding", f[r], one[i], rtol=1e-4, atol=1e-5, what=f"features of row {i}")


def _scaled(neuron: int, factor: float):
    """A site hook scaling one neuron by `factor` at every position (or pixel)."""
    def fn(_l: int, a: torch.Tensor) -> torch.Tensor:
        a = a.clone()
        if a.dim() == 4:
            a[:, neuron] *= factor
        else:
            a[..., neuron] *= factor
        return a
    return fn


def check_importance(adapter: Adapter, conf: Confidence, examples: Sequence[Example],
                     eps: float = 1e-2) -> None:
    """a·∂M/∂a (summed over positions) == (M(a(1+ε)) − M(a(1−ε))) / 2ε, per example, for
    the three neurons of largest attribution (a float32 difference resolves only those)."""
    layers = list(range(adapter.n_layers))
    attr = attributions(adapter, conf, examples, layers, batch_size=len(examples))
    scale = max(float(np.abs(v).max()) for v in attr.values())
    if scale < 1e-6:
        raise ConformanceError("importance", "every attribution is 0")
    best = sorted(((float(np.abs(attr[l][:, n]).mean()), l, n) for l in layers
                   for n in np.argsort(-np.abs(attr[l]).mean(0))[:3]), reverse=True)[:3]
    for _, l, n in best:
        fd = np.zeros(len(examples))
        for b in adapter.batches(examples, len(examples), with_targets=conf.with_targets):
            b = b.to(adapter.device)
            m = []
            for f in (1 + eps, 1 - eps):
                with torch.no_grad(), on_sites(adapter, [l], _scaled(int(n), f)):
                    m.append(conf(b).double().cpu().numpy())
            fd[b.index.numpy()] = (m[0] - m[1]) / (2 * eps)
        _close("importance", attr[l][:, n], fd, rtol=0.02, atol=0.02 * scale,
               what=f"layer {l} neuron {int(n)}")


def _plain_ablation(adapter: Adapter, conf: Confidence, examples: Sequence[Example],
                    s: Sequence[tuple[int, int]], values: dict[int, np.ndarray] | None) -> np.ndarray:
    """M with set s rewritten (0, or values[layer][neuron]), one forward per example."""
    by_layer: dict[int, list[int]] = {}
    for l, n in s:
        by_layer.setdefault(l, []).append(n)

    def fn(l: int, a: torch.Tensor) -> torch.Tensor:
        a = a.clone()
        ns = by_layer[l]
        v = torch.zeros(len(ns)) if values is None else torch.tensor(values[l][ns])
        v = v.to(a.device, a.dtype)
        if a.dim() == 4:
            a[:, ns] = v[None, :, None, None]
        else:
            a[..., ns] = v
        return a

    out = np.zeros(len(examples))
    for b in adapter.batches(examples, 1, with_targets=conf.with_targets):
        b = b.to(adapter.device)
        with torch.no_grad(), on_sites(adapter, sorted(by_layer), fn):
            out[b.index.numpy()] = conf(b).double().cpu().numpy()
    return out


def _sets(adapter: Adapter, conf: Confidence, examples: Sequence[Example]) -> list[list[tuple[int, int]]]:
    """Sets that matter: the most important neurons, alone and across layers, and nothing."""
    last = adapter.n_layers - 1
    attr = attributions(adapter, conf, examples, [0, last], batch_size=len(examples))
    top = {l: [int(n) for n in np.argsort(-np.abs(attr[l]).mean(0))[:3]] for l in (0, last)}
    return [[(last, top[last][0])], [(0, n) for n in top[0]], [(0, top[0][0]), (last, top[last][1])],
            [(last, n) for n in top[last]], []]


def check_ablation(adapter: Adapter, conf: Confidence, examples: Sequence[Example]) -> np.ndarray:
    """ablate_sets (every path) == one plain forward per set, zero and mean ablation."""
    sets = _sets(adapter, conf, examples)
    rng = np.random.default_rng(0)
    values = {l: rng.normal(size=adapter.n_neurons(l)) for l in range(adapter.n_layers)}
    zero = None
    for method, vals in (("zero", None), ("mean", values)):
        want = np.stack([_plain_ablation(adapter, conf, examples, s, vals) for s in sets])
        for kw in ({}, {"share_prefix": False}, {"fan_out": False}):
            got = ablate_sets(adapter, conf, examples, sets, method=method, values=vals,
                              batch_size=len(examples), **kw)
            _close("ablation", got, want, rtol=1e-4, atol=1e-5, what=f"{method} ablation {kw or ''}")
        zero = want if zero is None else zero
    if np.abs(zero[:-1] - zero[-1]).max() < 1e-5:
        raise ConformanceError("ablation", "no set changes the confidence: the check says nothing")
    return zero


def check_confidence(adapter: Adapter, examples: Sequence[Example]) -> None:
    """The readout probe sees the train split only; ablation reads the test split."""
    flipped = [e if e.split == "train" else replace(e, label=1 - e.label)
               for e in examples]
    a = Confidence(adapter, examples, force_readout=True)
    b = Confidence(adapter, flipped, force_readout=True)
    _close("confidence", b.w.cpu(), a.w.cpu(), rtol=1e-6, atol=1e-7,
           what="readout weights after relabelling the test split")
    probes = ProbeSet(concept="conformance", modality=adapter.modality, examples=list(examples))
    test = ablation_examples(probes)
    if not test or any(e.split != "test" for e in test):
        raise ConformanceError("confidence", "ablation is not measured on the test split")


def _weight_bytes(adapter: Adapter) -> int:
    return sum(p.numel() * p.element_size() for p in adapter.model.parameters())


def check_offload(factory: Factory, plain: Adapter, conf: Confidence,
                  examples: Sequence[Example]) -> str:
    """Offloaded (most weights on disk) == in memory; or a clear refusal."""
    try:
        disk = factory(device_map="auto", max_memory=f"cpu={_weight_bytes(plain) // 3}")
    except ModelError as e:
        if "--device-map" not in str(e) or "\n" in str(e):
            raise ConformanceError("offload", f"refused without naming --device-map: {e}") from None
        return f"refused: {e}"
    where = set(getattr(disk.model, "hf_device_map", {}).values())
    if "disk" not in where:
        raise ConformanceError("offload", f"nothing went to disk ({where})")
    layers = list(range(plain.n_layers))
    want = _by_row(*pooled_activations(plain, examples, layers, batch_size=len(examples))[:2])
    got = _by_row(*pooled_activations(disk, examples, layers, batch_size=len(examples))[:2])
    for l in layers:
        _close("offload", got[l], want[l], rtol=1e-6, atol=1e-6, what=f"pooled layer {l}")
    dconf = Confidence(disk, examples) if conf.mode == "readout" else conf
    if conf.mode == "readout":
        _close("offload", dconf.w.cpu(), conf.w.cpu(), rtol=1e-4, atol=1e-6, what="readout weights")
    sets = _sets(plain, conf, examples)
    want_m = ablate_sets(plain, conf, examples, sets, batch_size=len(examples))
    dconf = Confidence(disk, examples)
    got_m = ablate_sets(disk, dconf, examples, sets, batch_size=len(examples))
    _close("offload", got_m, want_m, rtol=1e-4, atol=1e-5, what="ablation")
    return "ok"


def sample(examples: Sequence[Example], per: int = 3) -> list[Example]:
    """`per` examples of each (split, label): the shortest, the longest and between, so a
    batch of them is padded."""
    groups: dict[tuple[str, int], list[Example]] = {}
    for e in examples:
        groups.setdefault((e.split, e.label), []).append(e)
    out = []
    for k in sorted(groups):
        g = sorted(groups[k], key=lambda e: len(e.text or ""))
        out += [g[int(i)] for i in np.unique(np.linspace(0, len(g) - 1, per).round())]
    return out


def check_adapter(factory: Factory, examples: Sequence[Example] | ProbeSet, *,
                  reference: Reference | None = None, offload: bool = True) -> dict[str, str]:
    """Run every check on the adapter `factory()` loads (`factory(device_map=..., max_memory=...)`
    for the offloaded copy). Raises ConformanceError on the first property broken;
    returns {check: "ok" | why it did not apply}."""
    if isinstance(examples, ProbeSet):
        examples = examples.examples
    examples = sample(examples)
    if {e.split for e in examples} < {"train", "test"} or {e.label for e in examples} != {0, 1}:
        raise ValueError("check_adapter needs train and test examples of both labels")
    adapter = factory()
    ref = reference or REFERENCES.get(adapter.family)
    if ref is None:
        raise ValueError(f"no plain computation of {adapter.family!r} neurons: pass reference=")
    report: dict[str, str] = {}
    check_site(adapter, examples, ref)
    report["site"] = "ok"
    check_padding(adapter, examples)
    report["padding"] = "ok"
    conf = Confidence(adapter, examples)
    check_importance(adapter, conf, examples)
    report["importance"] = f"ok ({conf.metric})"
    check_ablation(adapter, conf, examples)
    report["ablation"] = "ok"
    check_confidence(adapter, examples)
    report["confidence"] = "ok"
    report["offload"] = check_offload(factory, adapter, conf, examples) if offload else "not asked"
    return report

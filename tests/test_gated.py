"""The gated-MLP decoder adapter on a tiny random checkpoint of every model type it claims:
its neurons are act(gate) * up (the input of down_proj, not act_fn's output), batched
ablation is exact on padded batches, and importance differentiates through the site."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gated_fixtures import MODEL_TYPES, TEXTS, build_tiny

from neurolens.engine.models import registry
from neurolens.engine.causal.ablation.executor import _block_stack, ablate_sets
from neurolens.engine.models.adapters.gated import GatedDecoderAdapter
from neurolens.engine.causal.confidence import Confidence
from neurolens.engine.runtime.extract import pooled_activations
from neurolens.engine.runtime.hooks import on_sites
from neurolens.engine.causal.importance import attributions
from neurolens.probes.types import Example

TARGET = "crown"


@pytest.fixture(scope="module", params=MODEL_TYPES)
def tiny(request, tmp_path_factory):
    path = build_tiny(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, registry.load(str(path))


def _examples() -> list[Example]:
    return [Example(example_id=i, label=i % 2, group=f"g{i}", split="test", text=t, target=TARGET)
            for i, t in enumerate(TEXTS)]


def _plain_neurons(adapter, batch, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(act(gate) * up, act(gate)) at `layer`, from the MLP's weights and its input
    (captured by a hook on the MLP, not on any neuron module), [B, T, N]."""
    mlp = adapter.base().layers[layer].mlp
    seen = {}
    h = mlp.register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0].detach().clone()))
    try:
        with torch.no_grad():
            adapter.forward(batch)
    finally:
        h.remove()
    x = seen["x"]
    if hasattr(mlp, "gate_up_proj"):          # Phi-3: one fused matrix, gate rows first
        gate_w, up_w = mlp.gate_up_proj.weight.chunk(2, dim=0)
        act = mlp.activation_fn
    else:
        gate_w, up_w, act = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.act_fn
    g = act(x @ gate_w.T)
    return g * (x @ up_w.T), g


def test_adapter_claims_the_type(tiny):
    mt, adapter = tiny
    assert isinstance(adapter, GatedDecoderAdapter) and adapter.kind == "causal_lm"
    assert adapter.family == "llama"
    assert adapter.model.config.model_type == mt
    assert adapter.n_layers == 2 and adapter.n_neurons(1) == 48
    mod, side = adapter.neuron_site(1)
    assert side == "input" and mod is adapter.base().layers[1].mlp.down_proj


def test_site_values_are_gate_times_up(tiny):
    """Hooked site values equal a plain computation of act(gate)*up, at every position
    of a right-padded batch of different lengths, and differ from act(gate) alone;
    the stored (pooled, fp16) values are their mean over real tokens."""
    _, adapter = tiny
    ex = _examples()
    batch = next(adapter.batches(ex, len(ex))).to(adapter.device)
    assert int(batch.mask.sum(1).min()) < int(batch.mask.sum(1).max())   # padded
    got = {}
    with torch.no_grad(), on_sites(adapter, [0, 1], lambda l, a: got.setdefault(l, a.clone())):
        adapter.forward(batch)
    m = batch.mask.bool()
    for layer in (0, 1):
        want, gate_only = _plain_neurons(adapter, batch, layer)
        torch.testing.assert_close(got[layer][m], want[m], rtol=1e-5, atol=1e-6)
        assert (gate_only[m] - want[m]).abs().mean() > 0.1 * want[m].abs().mean()
    rows, bufs, _ = pooled_activations(adapter, ex, [1], batch_size=4)
    want, _ = _plain_neurons(adapter, batch, 1)
    w = batch.mask.unsqueeze(-1).float()
    pooled = ((want * w).sum(1) / w.sum(1)).numpy()
    order = {int(i): r for r, i in enumerate(batch.index.numpy())}
    stored = bufs[1].float().numpy()
    np.testing.assert_allclose(stored, pooled[[order[int(i)] for i in rows]], rtol=2e-3, atol=2e-3)


def test_padding_does_not_change_values(tiny):
    """An example's activations and target probability are the same alone as in a
    padded batch (attention masks and position ids are right)."""
    _, adapter = tiny
    ex = _examples()
    conf = Confidence(adapter, ex)
    together = ablate_sets(adapter, conf, ex, [[]], batch_size=len(ex))[0]
    alone = ablate_sets(adapter, conf, ex, [[]], batch_size=1)[0]
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-7)
    _, a_all, _ = pooled_activations(adapter, ex, [1], batch_size=len(ex))
    rows1, a_one, _ = pooled_activations(adapter, ex, [1], batch_size=1)
    rows, _, _ = pooled_activations(adapter, ex, [1], batch_size=len(ex))
    np.testing.assert_allclose(a_all[1].float().numpy()[np.argsort(rows)],
                               a_one[1].float().numpy()[np.argsort(rows1)], rtol=1e-2, atol=1e-3)


#: the layouts that differ around the MLP: plain (Llama), post-MLP norms and soft-capped
#: logits (Gemma 2), sliding-window masks and two rotary tables (Gemma 3), fused gate_up (Phi-3)
ABLATION_TYPES = ("llama", "gemma2", "gemma3_text", "phi3")


def test_batched_ablation_equals_one_forward_each(tiny):
    """Fan-out (through down_proj, the readout of an input site), prefix and flat
    ablation all equal one forward per set, on a padded batch of different lengths:
    masks, position ids and rotary tables survive the replicas."""
    mt, adapter = tiny
    if mt not in ABLATION_TYPES:
        pytest.skip("the ablation paths are shared; four layouts cover them")
    ex = _examples()
    conf = Confidence(adapter, ex)
    assert _block_stack(adapter, [0, 1]) is not None
    assert adapter.neuron_readout(1) is adapter.base().layers[1].mlp.down_proj
    sets = [[(0, 3)], [(1, 5)], [(0, 1), (0, 7), (1, 2)], [], [(1, 4), (1, 9), (1, 11)],
            [(0, n) for n in range(0, 48, 3)]]
    values = {l: np.linspace(-0.2, 0.4, 48) for l in (0, 1)}
    ranges = {(l, n): (-0.3, 0.3) for s in sets for l, n in s}
    for method in ("mean", "range"):
        kw = dict(method=method, values=values, ranges=ranges, batch_size=4)
        slow = np.stack([ablate_sets(adapter, conf, ex, [s], replicas=1, share_prefix=False, **kw)[0]
                         for s in sets])
        for variant in (dict(), dict(fan_out=False), dict(share_prefix=False)):
            fast = ablate_sets(adapter, conf, ex, sets, **kw, **variant)
            np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-7, err_msg=f"{method} {variant}")
        assert np.abs(slow - slow[3]).max() > 1e-4 * np.abs(slow[3]).max()   # ablations change M


def test_importance_is_gradient_at_the_site(tiny):
    """Attribution a * dM/da (summed over positions) at the input site equals dM/ds of
    scaling the neuron by s at s = 1, by central differences."""
    _, adapter = tiny
    ex = _examples()[:3]
    conf = Confidence(adapter, ex)
    att = attributions(adapter, conf, ex, [1], batch_size=3)[1]
    n = int(np.argmax(np.abs(att).sum(0)))
    batch = next(adapter.batches(ex, 3, with_targets=True)).to(adapter.device)

    def m_at(s: float) -> np.ndarray:
        def scale(_l, a):
            a = a.clone()
            a[..., n] *= s
            return a
        with torch.no_grad(), on_sites(adapter, [1], scale):
            return conf(batch).double().numpy()

    eps = 1e-2
    fd = (m_at(1 + eps) - m_at(1 - eps)) / (2 * eps)
    want = np.empty(3)
    want[batch.index.numpy()] = fd
    assert np.abs(want).max() > 1e-6
    np.testing.assert_allclose(att[:, n], want, rtol=1e-2, atol=5e-3 * np.abs(want).max())


def test_readout_features_are_after_the_final_norm(tiny):
    """The readout probe's features: the mean over real tokens of the final hidden
    states after the model's final norm (not the raw residual stream before it)."""
    _, adapter = tiny
    ex = _examples()
    batch = next(adapter.batches(ex, len(ex))).to(adapter.device)
    seen = {}
    norm = adapter.base().norm
    h = norm.register_forward_hook(lambda _m, a, out: seen.update(pre=a[0], post=out))
    try:
        with torch.no_grad():
            feats = adapter.features(batch)
    finally:
        h.remove()
    w = batch.mask.unsqueeze(-1).float()
    mean = lambda x: (x.float() * w).sum(1) / w.sum(1)  # noqa: E731
    torch.testing.assert_close(feats, mean(seen["post"]), rtol=1e-5, atol=1e-6)
    assert (feats - mean(seen["pre"])).abs().max() > 1e-2

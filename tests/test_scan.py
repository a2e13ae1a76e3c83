"""Corpus scans on planted checkpoints: the streamed state equals a brute force that keeps every
activation (GPT-2, BERT, Llama; fp32 and fp16), shards merge to the single scan, and the
planted royalty neurons' top excerpts peak on royalty words while the decoy's do not."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from neurolens.engine.models import registry
from neurolens.engine.runtime.hooks import on_sites
from neurolens.engine.runtime.scan import ScanSettings, _batch, calibrate, is_gated, scan_states
from neurolens.probes.corpora import Corpus, cut
from tests.scan_reference import reference
from tests.test_scan_kernel import _check

S = ScanSettings(k=4, window=5, samples=2, bins=8, batch_size=6, calibration=6)


def mixed_corpus(n: int = 60, seed: int = 0) -> Corpus:
    """Sentences of the planted vocabulary: a quarter with a royalty word, the rest ordinary."""
    from neurolens.engine.planted.text import ANIMALS, NEUTRAL, ROYALTY, TEMPLATES

    rng = random.Random(seed)
    texts = []
    for i in range(n):
        pool = ROYALTY if i % 4 == 0 else NEUTRAL + ANIMALS
        texts.append(rng.choice(TEMPLATES).format(w=rng.choice(pool)))
    return Corpus("mixed", texts)


def brute_force(adapter, ex, layers):
    """Every activation of every excerpt, [E, T, N] float32 per layer (and gate/up for gated)."""
    from neurolens.engine.runtime.scan import _gate_up_hooks

    e, t = ex.ids.shape
    acts = {l: np.zeros((e, t, adapter.n_neurons(l)), np.float32) for l in layers}
    gu: dict = {}
    gates = {l: np.zeros_like(acts[l]) for l in layers}
    ups = {l: np.zeros_like(acts[l]) for l in layers}
    for lo in range(0, e, S.batch_size):
        idx = np.arange(lo, min(lo + S.batch_size, e))
        b, _ = _batch(adapter, ex, idx)
        tb = b.inputs["input_ids"].shape[1]

        def keep(layer, out, idx=idx, tb=tb):
            acts[layer][idx, :tb] = out.float().numpy()
            if (layer, "gate") in gu:
                gates[layer][idx, :tb] = gu.pop((layer, "gate")).float().numpy()
                ups[layer][idx, :tb] = gu.pop((layer, "up")).float().numpy()

        with torch.inference_mode(), _gate_up_hooks(adapter, layers, gu), on_sites(adapter, layers, keep):
            adapter.forward(b)
    return acts, gates, ups


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_scan_equals_brute_force(planted_factory, family, dtype):
    pm = planted_factory(family)
    adapter = registry.load(str(pm.path), device="cpu", dtype=dtype)
    ex = cut(mixed_corpus(), adapter.processor, length=12)
    layers = [1, 2]
    edges = calibrate(adapter, ex, layers, S)
    states = scan_states(adapter, ex, layers, edges, S)
    whole = {l: st.copy() for l, st in states.items()}
    acts, gates, ups = brute_force(adapter, ex, layers)
    gated = is_gated(adapter)
    for l in layers:
        ref = reference(acts[l], np.arange(len(ex)), ex.lengths, edges[l][0].numpy(), edges[l][1].numpy(),
                        k=S.k, window=S.window, samples=S.samples, bins=S.bins,
                        gate=gates[l] if gated else np.zeros_like(acts[l]),
                        up=ups[l] if gated else np.zeros_like(acts[l]))
        st = states[l]
        if not gated:   # the reference's bottom-k and signs exist only for gated MLPs
            st.bot_val, st.bot_ex, st.bot_pos, st.bot_win, st.bot_start = (
                torch.from_numpy(np.ascontiguousarray(x)) for x in ref["bot"])
            st.signs = torch.from_numpy(ref["signs"])
        _check(st, ref, acts[l].shape[2])
    # two shards merged equal the single scan; the cut falls on a batch boundary, so each
    # shard runs the very batches the single scan ran (a matmul's rounding may depend on
    # its batch's shape, and this checks the merge, not the kernels' batch invariance)
    cut_at = (len(ex) // 2) // S.batch_size * S.batch_size
    assert 0 < cut_at < len(ex)
    half = np.arange(len(ex)) < cut_at
    a = scan_states(adapter, ex, layers, edges, S, np.flatnonzero(half))
    b = scan_states(adapter, ex, layers, edges, S, np.flatnonzero(~half))
    for l in layers:
        m = b[l].merge(a[l])
        for f in ("top_val", "top_ex", "top_pos", "hist", "hist_max", "s_key", "s_ex", "active"):
            assert torch.equal(getattr(m, f), getattr(whole[l], f)), f
        torch.testing.assert_close(m.mean, whole[l].mean, rtol=1e-12, atol=1e-12)

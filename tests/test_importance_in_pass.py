"""Importance taken in the extraction pass equals the separate forward + backward, and the
pooled activations of that pass equal those of a plain extraction."""
from __future__ import annotations

import numpy as np
import pytest

from neurolens.engine.causal.confidence import Confidence
from neurolens.engine.runtime.extract import pooled_activations
from neurolens.engine.causal.importance import InPass, importance


@pytest.fixture(scope="module", params=["gpt2", "bert", "resnet", "llama"])
def planted(request, tmp_path_factory):
    from neurolens.engine.models import registry
    from neurolens.engine.planted.build import build_planted

    pm = build_planted(request.param, tmp_path_factory.mktemp("inpass") / request.param, seed=2)
    return pm, registry.load(str(pm.path))


def _sorted(rows, bufs):
    order = np.argsort(rows)
    return {l: v.float().cpu().numpy()[order] for l, v in bufs.items()}


@pytest.mark.parametrize("readout", [False, True])
def test_in_pass_importance_equals_separate(planted, readout):
    pm, adapter = planted
    ex = pm.probes.examples
    layers = list(range(adapter.n_layers))
    ref_conf = Confidence(adapter, ex, force_readout=readout)
    if not readout and ref_conf.mode != "target":
        pytest.skip("no target confidence for this family")
    spec = InPass(Confidence(adapter, ex, force_readout=readout, fit=False), ex)
    if not InPass.fusable(adapter, spec.conf):
        pytest.skip("a masked LM's target input is not the extracted input")
    rows, bufs, _ = pooled_activations(adapter, ex, layers, batch_size=8, in_pass=spec)
    pos = [e for e in ex if e.label == 1 and e.split == "train"]
    ref = importance(adapter, ref_conf, pos, layers, batch_size=8)
    assert spec.conf.fitted and spec.result is not None
    for l in layers:
        assert ref[l].max() > 0
        np.testing.assert_allclose(spec.result[l], ref[l], rtol=2e-3, atol=1e-6 * ref[l].max())
    # the stored activations: the same as a plain pass, to fp16 rounding
    r0, b0, _ = pooled_activations(adapter, ex, layers, batch_size=8)
    got, want = _sorted(rows, bufs), _sorted(r0, b0)
    for l in layers:
        np.testing.assert_allclose(got[l], want[l], rtol=2e-3, atol=2e-3)
    if readout:   # the probe fitted on the pass's features is the separately fitted probe
        np.testing.assert_allclose(spec.conf.w.numpy(), ref_conf.w.numpy(), rtol=1e-3,
                                   atol=1e-4 * float(ref_conf.w.abs().max()))


def test_over_budget_readout_only_fits_the_probe(planted):
    pm, adapter = planted
    ex = pm.probes.examples
    spec = InPass(Confidence(adapter, ex, force_readout=True, fit=False), ex, budget=0)
    pooled_activations(adapter, ex, [0], batch_size=8, in_pass=spec)
    ref = Confidence(adapter, ex, force_readout=True)
    assert spec.result is None and spec.conf.fitted
    np.testing.assert_allclose(spec.conf.w.numpy(), ref.w.numpy(), rtol=1e-3,
                               atol=1e-4 * float(ref.w.abs().max()))

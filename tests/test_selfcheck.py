"""Ground truth through the real pipeline: planted neurons are found, proven, and the
one-backward-pass importance agrees with true ablation."""
from __future__ import annotations

import pytest

from neurolens.engine.planted.build import FAMILIES


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_planted_neurons_found_and_proven(family, tmp_path):
    from neurolens.selfcheck import check_family

    r = check_family(family, tmp_path)
    assert r.recall == 1.0, r                 # recall@k, k = number planted
    assert r.surface_ok, r                    # the surface-feature distractor is not among them
    # random (unplanted) neurons are not findings under the paired group test
    assert r.random_sig_share <= 0.05, r
    assert r.validated and r.p_value < 0.05, r   # mean-ablating it beats matched random sets, specifically
    assert r.importance_rho >= 0.7, r         # importance vs single-neuron ablation, top 50
    if family == "llama":                     # the act(gate)-only decoy: silent at the true site
        assert r.decoy_ok is True and r.decoy_selectivity < 0.05, r
    assert r.ok

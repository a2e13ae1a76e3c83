"""Every built-in family honours the adapter contract (`check_adapter`), and adapters
broken in the ways a new family's author could break one fail it."""
from __future__ import annotations

import pytest
import torch
from adapter_conformance import ConformanceError, check_adapter
from neurolens.engine.models import registry
from neurolens.engine.models.adapters.gpt2 import GPT2Adapter



def _factory(path, cls=None):
    """registry.load(path, **placement), re-classed as `cls` where one is given."""
    def load(**kw):
        a = registry.load(str(path), **kw)
        if cls is not None:
            a.__class__ = cls
        return a
    return load


@pytest.mark.parametrize("family", ["gpt2", "bert", "roberta", "llama"])
def test_text_family_conforms(planted_factory, family):
    pm = planted_factory(family)
    assert check_adapter(_factory(pm.path), pm.probes)["offload"] == "ok"


def test_resnet_conforms(planted_factory):
    pm = planted_factory("resnet")
    report = check_adapter(_factory(pm.path), pm.probes)
    assert report["offload"].startswith("refused")     # its loader takes no placement


def test_torchvision_resnet_conforms(planted_factory):
    """torchvision's ResNet-18 layout (random weights: nothing to download), where it imports."""
    tvm = pytest.importorskip("torchvision.models")
    from neurolens.engine.models.adapters.resnet import ImagePrep
    from neurolens.engine.models.adapters.torchvision_resnet import TorchvisionResNetAdapter

    def load(**kw):
        if kw:      # placement: the registry's own answer for torchvision models
            return registry.load("torchvision:resnet18", **kw)
        torch.manual_seed(0)
        model = tvm.resnet18(weights=None).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        a = TorchvisionResNetAdapter.__new__(TorchvisionResNetAdapter)
        a._categories = []
        TorchvisionResNetAdapter.__init__(a, model, ImagePrep(64), name="tv", ref="torchvision:resnet18",
                                          kind="vision", device=torch.device("cpu"), dtype=torch.float32)
        return a

    assert check_adapter(load, planted_factory("resnet").probes)["offload"].startswith("refused")


class OffByOne(GPT2Adapter):
    """Reads layer l+1's neurons when asked for layer l's."""

    def neuron_module(self, layer: int):
        return super().neuron_module(min(layer + 1, self.n_layers - 1))

    def neuron_readout(self, layer: int):
        return super().neuron_readout(min(layer + 1, self.n_layers - 1))


class MaskBlind(GPT2Adapter):
    """Says every position of a padded batch is a real token."""

    def batches(self, examples, batch_size, *, with_targets=False):
        for b in super().batches(examples, batch_size, with_targets=with_targets):
            b.mask = torch.ones_like(b.mask)
            yield b


@pytest.mark.parametrize("broken, check", [(OffByOne, "site"), (MaskBlind, "padding")])
def test_broken_adapters_fail(planted_factory, broken, check):
    pm = planted_factory("gpt2")
    with pytest.raises(ConformanceError) as err:
        check_adapter(_factory(pm.path, broken), pm.probes, offload=False)
    assert err.value.check == check, err.value

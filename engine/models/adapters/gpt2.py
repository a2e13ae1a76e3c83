"""GPT-2 (small, medium, any GPT-2 checkpoint): neurons are `h[l].mlp.act` outputs."""
from __future__ import annotations

import torch
from torch import nn

from neurolens.engine.models.adapters.text import TextAdapter


class GPT2Adapter(TextAdapter):
    family = "gpt2"
    model_types = ("gpt2",)
    head_classes = {"causal_lm": "GPT2LMHeadModel", "encoder": "GPT2Model"}

    def base(self) -> nn.Module:
        return getattr(self.model, "transformer", self.model)

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)

    @property
    def n_layers(self) -> int:
        return int(self.base().config.n_layer)

    def n_neurons(self, layer: int) -> int:
        return int(self.base().h[layer].mlp.c_fc.nf)

    def neuron_module(self, layer: int) -> nn.Module:
        return self.base().h[layer].mlp.act

    def neuron_readout(self, layer: int) -> nn.Module:
        # GPT2Block: residual + dropout(c_proj(neurons))
        return self.base().h[layer].mlp.c_proj

"""BERT (and BERT-architecture checkpoints such as MiniLM): neurons are the
`encoder.layer[l].intermediate` outputs, i.e. dense + activation."""
from __future__ import annotations

import torch
from torch import nn

from neurolens.engine.models.adapters.text import TextAdapter


class BertAdapter(TextAdapter):
    family = "bert"
    model_types = ("bert",)
    head_classes = {"masked_lm": "BertForMaskedLM", "encoder": "BertModel"}
    base_attr = "bert"

    def base(self) -> nn.Module:
        return getattr(self.model, self.base_attr, self.model)

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.cls(hidden)

    @property
    def n_layers(self) -> int:
        return int(self.base().config.num_hidden_layers)

    def n_neurons(self, layer: int) -> int:
        return int(self.base().encoder.layer[layer].intermediate.dense.out_features)

    def neuron_module(self, layer: int) -> nn.Module:
        return self.base().encoder.layer[layer].intermediate

    def neuron_readout(self, layer: int) -> nn.Module:
        # BertOutput: LayerNorm(dropout(dense(neurons)) + attention output)
        return self.base().encoder.layer[layer].output.dense

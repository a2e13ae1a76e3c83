"""RoBERTa: BERT's layout under `roberta.`, with its own LM head."""
from __future__ import annotations

import torch

from neurolens.engine.models.adapters.bert import BertAdapter


class RobertaAdapter(BertAdapter):
    family = "roberta"
    model_types = ("roberta",)
    head_classes = {"masked_lm": "RobertaForMaskedLM", "encoder": "RobertaModel"}
    base_attr = "roberta"

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)

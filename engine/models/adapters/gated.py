"""Gated-MLP decoders (Llama and the families that share its layout).

Their MLP is ``down_proj(act(gate_proj(x)) * up_proj(x))`` (Phi-3 fuses gate and up
into one `gate_up_proj`, the product is the same). The neuron is the product: no module
outputs it, so the site is the *input* of ``model.layers[l].mlp.down_proj``, which is
TransformerLens's ``blocks.L.mlp.hook_post``. Reading ``act_fn`` instead would measure
act(gate) alone, which is not what the block writes.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from neurolens.engine.models import head
from neurolens.engine.models.adapters.base import Batch, Side, StopForward
from neurolens.engine.models.adapters.text import TextAdapter
from neurolens.probes.types import Example


class GatedDecoderAdapter(TextAdapter):
    """Any decoder whose blocks are ``model.layers[l]`` with ``mlp.down_proj``."""

    family = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                   "phi3", "olmo2", "granite")
    head_classes = {"causal_lm": "AutoModelForCausalLM", "encoder": "AutoModel"}

    def base(self) -> nn.Module:
        return getattr(self.model, "model", self.model)

    @property
    def n_layers(self) -> int:
        return len(self.base().layers)

    def n_neurons(self, layer: int) -> int:
        return int(self.base().layers[layer].mlp.down_proj.in_features)

    def neuron_module(self, layer: int) -> nn.Module:
        return self.base().layers[layer].mlp.down_proj

    def neuron_site(self, layer: int) -> tuple[nn.Module, Side]:
        return self.neuron_module(layer), "input"

    def gate_up(self, layer: int) -> tuple[nn.Module, nn.Module] | None:
        mlp = self.base().layers[layer].mlp
        if hasattr(mlp, "gate_proj") and hasattr(mlp, "up_proj"):
            return mlp.gate_proj, mlp.up_proj
        return None     # Phi-3's fused gate_up_proj: no sign counts

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head, with the family's own output scaling (Granite divides the
        logits, Gemma 2 soft-caps them), so probabilities are the model's own."""
        return self._post_logits(self.model.lm_head(hidden))

    def _post_logits(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        scale = getattr(cfg, "logits_scaling", None)
        if scale:
            logits = logits / scale
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def head_target_logprobs(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The target's log-probability from the log-sum-exp over vocabulary chunks: the
        same number as the full log-softmax, without [B, V] logits (Gemma 3: V = 262,144)."""
        lm = getattr(self.model, "lm_head", None)
        if (not isinstance(lm, nn.Linear) or hasattr(lm, "_hf_hook")
                or lm.weight.device != x.device):
            # a head accelerate places (offloaded: its weight arrives in its own forward hook)
            # or one on another device goes through its module, as transformers computes it
            return super().head_target_logprobs(x, targets)
        return head.target_logprobs(x, lm.weight, lm.bias, targets, post=self._post_logits)

    def batches(self, examples: Sequence[Example], batch_size: int, *,
                with_targets: bool = False) -> Iterator[Batch]:
        """Right-padded batches with explicit position ids (0.. over the real tokens),
        so rotary positions do not depend on how the batch was padded."""
        for b in super().batches(examples, batch_size, with_targets=with_targets):
            m = b.inputs["attention_mask"]
            b.inputs["position_ids"] = (m.cumsum(1) - 1).clamp_min(0)
            yield b

    def forward(self, batch: Batch):
        try:
            return self.model(**batch.inputs, use_cache=False)
        except StopForward:
            return None

    def _hidden(self, batch: Batch) -> torch.Tensor:
        return self.base()(**batch.inputs, use_cache=False).last_hidden_state

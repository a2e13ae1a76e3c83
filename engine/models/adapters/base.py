"""The one interface every model family honours (scikit-learn style: small and shared).

An adapter knows four things about its family: where the neurons are
(`neuron_site`: a module and whether the neurons are its output or its input), how
many there are (`n_layers`, `n_neurons`), how examples become batches (`batches`), and
how the model's concept confidence is read (`features` for the readout probe,
`target_logprobs` for LM heads). Everything else — extraction, importance, ablation —
is written once against this interface.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from neurolens.errors import ModelError  # noqa: F401 - re-exported: its home is neurolens.errors
from neurolens.probes.types import Example

Kind = Literal["causal_lm", "masked_lm", "encoder", "vision"]
#: which side of the site's module carries the neurons
Side = Literal["input", "output"]


class StopForward(Exception):
    """Raised by a hook after the last layer anyone needs: the rest is never computed."""


@dataclass
class Batch:
    """A model-ready batch and what the engine needs to know about its positions."""

    inputs: dict[str, torch.Tensor]
    index: torch.Tensor                          # [B] positions in the example list given
    labels: torch.Tensor                         # [B] 1 concept / 0 not
    mask: torch.Tensor | None = None             # [B, T] 1 on real tokens (text only)
    concept_mask: torch.Tensor | None = None     # [B, T] 1 on the concept word's tokens
    target_ids: torch.Tensor | None = None       # [B] token whose probability is the confidence
    target_pos: torch.Tensor | None = None       # [B] position whose output predicts it
    n_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.index.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, inputs={k: v.to(device) for k, v in self.inputs.items()},
                       index=self.index, labels=mv(self.labels), mask=mv(self.mask),
                       concept_mask=mv(self.concept_mask), target_ids=mv(self.target_ids),
                       target_pos=mv(self.target_pos))

    def repeat(self, r: int, *, inputs: bool = True) -> Batch:
        """The batch stacked r times (replica-major), for many ablations in one forward.
        With `inputs=False` the model inputs stay as they are (the forward widens to the
        replicas itself, inside the model); the rest is stacked."""
        rp = lambda t: None if t is None else t.repeat(r, *([1] * (t.dim() - 1)))  # noqa: E731
        return replace(self, inputs={k: rp(v) for k, v in self.inputs.items()} if inputs else self.inputs,
                       index=self.index.repeat(r), labels=rp(self.labels), mask=rp(self.mask),
                       concept_mask=rp(self.concept_mask), target_ids=rp(self.target_ids),
                       target_pos=rp(self.target_pos), n_tokens=self.n_tokens * r)


class Adapter(ABC):
    """A loaded model of one family, seen through the interface the engine uses."""

    family: ClassVar[str]
    modality: ClassVar[Literal["text", "vision"]] = "text"
    model_types: ClassVar[tuple[str, ...]] = ()   # transformers `config.model_type`s handled
    #: a site's output is the whole stream the next block reads (a ResNet block's output):
    #: ablation may then widen the batch to its replicas right at the site, so the ablated
    #: block runs once. False where blocks also pass masks or a residual (transformers).
    site_is_stream: ClassVar[bool] = False

    def __init__(self, model: nn.Module, processor: Any, *, name: str, ref: str, kind: Kind,
                 device: torch.device, dtype: torch.dtype):
        self.model = model
        self.processor = processor
        self.name = name
        self.ref = ref
        self.kind = kind
        self.device = device
        self.dtype = dtype

    # -- loading -------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, ref: str, *, name: str, device: torch.device, dtype: torch.dtype,
             local_only: bool) -> Adapter:
        """Load weights and tokenizer/processor from a hub id or a local directory."""

    # -- where the neurons are ------------------------------------------------
    @property
    @abstractmethod
    def n_layers(self) -> int: ...

    @abstractmethod
    def n_neurons(self, layer: int) -> int: ...

    @abstractmethod
    def neuron_module(self, layer: int) -> nn.Module:
        """The module at layer `layer`'s neuron site: its forward output (or its input,
        where `neuron_site` says "input") is the neuron activations, [B, T, N] for text,
        [B, C, H, W] for vision."""

    def neuron_site(self, layer: int) -> tuple[nn.Module, Side]:
        """(module, "output" | "input"): where layer `layer`'s neurons can be read.

        Most families' neurons are a module's output (GPT-2's `mlp.act`). A gated MLP's
        neuron act(gate(x)) * up(x) is no module's output: it is the input of the
        down-projection, so those adapters answer (down_proj, "input"). Hooks,
        extraction, importance, ablation and labels all go through this one answer."""
        return self.neuron_module(layer), "output"

    def neuron_readout(self, layer: int) -> nn.Module | None:
        """The affine module (`nn.Linear` or GPT-2's `Conv1D`) whose input is exactly
        layer `layer`'s neurons, where nothing but dropout, residual adds, scalings and
        (RMS/Layer)Norm lies between its output and the block's output; None where that
        does not hold.

        Ablation uses it to run the ablated block once for every replica and subtract
        each replica's low-rank change (a_n - v) W_n, instead of running the block R
        times. For an input site the readout is the site's module itself (that is the
        default); None only loses that optimisation."""
        mod, side = self.neuron_site(layer)
        return mod if side == "input" else None

    def gate_up(self, layer: int) -> tuple[nn.Module, nn.Module] | None:
        """Gated MLPs: the modules whose outputs are the neuron's gate (before its activation)
        and up factors, so a scan can count their sign combinations; None elsewhere."""
        return None

    def check_layers(self, layers: Sequence[int] | None) -> list[int]:
        if not layers:
            return list(range(self.n_layers))
        bad = [l for l in layers if not 0 <= int(l) < self.n_layers]
        if bad:
            raise ModelError(f"layer {bad[0]} is out of range for {self.name} "
                             f"(it has layers 0..{self.n_layers - 1})")
        return sorted({int(l) for l in layers})

    # -- inputs --------------------------------------------------------------
    @abstractmethod
    def batches(self, examples: Sequence[Example], batch_size: int, *,
                with_targets: bool = False) -> Iterator[Batch]:
        """Batches in an order that wastes no padding (sorted by length); `Batch.index`
        maps rows back to `examples`. With targets, inputs are laid out so that
        `target_logprobs` can read the target's probability."""

    # -- running -------------------------------------------------------------
    def forward(self, batch: Batch) -> Any:
        """Run the model; a hook may raise StopForward to end it early (returns None)."""
        try:
            return self.model(**batch.inputs)
        except StopForward:
            return None

    @abstractmethod
    def features(self, batch: Batch) -> torch.Tensor:
        """[B, D] final pooled representation: the readout probe's input. Differentiable."""

    def target_logprobs(self, batch: Batch) -> torch.Tensor:
        """[B] log-probability of each example's target (LM heads only). Differentiable."""
        raise ModelError(f"{self.name} has no language-model head to read a target from")

    @property
    def has_lm_head(self) -> bool:
        """A language-model head (causal or masked): targets are continuations or masked words."""
        return self.kind in ("causal_lm", "masked_lm")

    @property
    def has_target_head(self) -> bool:
        """A head that `target_logprobs` can read a probe target from: an LM head, or an image
        classifier's class logits. The concept confidence uses it when every probe has a target."""
        return self.has_lm_head

"""ResNet-18/50 with torchvision's ImageNet weights (`torchvision:resnet18`), only where
torchvision imports against the installed torch; transformers' ResNets need no torchvision.
A neuron is one output channel of a residual block, after its final ReLU."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from neurolens.engine.models.adapters.base import Adapter, Batch, ModelError
from neurolens.engine.models.adapters.resnet import ImagePrep, load_images
from neurolens.probes.types import Example

ARCHS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}


class TorchvisionResNetAdapter(Adapter):
    family = "resnet"
    modality = "vision"
    site_is_stream = True
    ref_prefix: ClassVar[str] = "torchvision:"

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        m = self.model
        self._blocks = [blk for st in (m.layer1, m.layer2, m.layer3, m.layer4) for blk in st]
        self.categories = [c.lower() for c in getattr(self, "_categories", [])]

    @classmethod
    def load(cls, ref: str, *, name: str, device: torch.device, dtype: torch.dtype,
             local_only: bool) -> Adapter:
        arch = ref.removeprefix(cls.ref_prefix)
        if arch not in ARCHS:
            raise ModelError(f"{ref}: torchvision models supported here are {', '.join(ARCHS)}")
        try:
            import torchvision.models as tvm
        except Exception as e:  # ImportError, or a build that does not match this torch
            raise ModelError(f"{ref} needs torchvision, which does not import here ({type(e).__name__}); "
                             f"use {arch} (loaded through transformers) instead") from None
        weights = getattr(tvm, ARCHS[arch]).DEFAULT
        try:
            model = getattr(tvm, arch)(weights=weights)
        except Exception as e:
            raise ModelError(f"cannot load {ref}: no cached torchvision weights and no network "
                             f"({type(e).__name__})") from None
        model.eval().to(device=device, dtype=dtype)
        for p in model.parameters():
            p.requires_grad_(False)
        out = cls.__new__(cls)
        out._categories = list(weights.meta.get("categories", []))
        cls.__init__(out, model, ImagePrep(), name=name, ref=ref, kind="vision", device=device, dtype=dtype)
        return out

    @property
    def n_layers(self) -> int:
        return len(self._blocks)

    def n_neurons(self, layer: int) -> int:
        blk = self._blocks[layer]
        last = blk.bn3 if hasattr(blk, "bn3") else blk.bn2
        return int(last.num_features)

    def neuron_module(self, layer: int) -> nn.Module:
        return self._blocks[layer]

    def batches(self, examples: Sequence[Example], batch_size: int, *,
                with_targets: bool = False) -> Iterator[Batch]:
        labels = np.array([e.label for e in examples], dtype=np.int64)
        names = {c: i for i, c in enumerate(self.categories)}
        tgt = np.array([names.get((e.target or "").strip().lower(), -1) for e in examples], np.int64)
        for s in range(0, len(examples), batch_size):
            idx = np.arange(s, min(s + batch_size, len(examples)))
            pix = self.processor(load_images([examples[i] for i in idx])).to(self.dtype)
            yield Batch(inputs={"x": pix}, index=torch.from_numpy(idx),
                        labels=torch.from_numpy(labels[idx]),
                        target_ids=torch.from_numpy(tgt[idx]) if with_targets else None,
                        n_tokens=len(idx))

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        for blk in self._blocks:
            x = blk(x)
        return torch.flatten(m.avgpool(x), 1)

    def features(self, batch: Batch) -> torch.Tensor:
        return self._trunk(batch.inputs["x"]).float()

    def target_logprobs(self, batch: Batch) -> torch.Tensor:
        logits = self.model.fc(self._trunk(batch.inputs["x"])).float()
        rows = torch.arange(logits.shape[0], device=logits.device)
        return torch.log_softmax(logits, -1)[rows, batch.target_ids.clamp_min(0)]

    @property
    def has_target_head(self) -> bool:
        return True

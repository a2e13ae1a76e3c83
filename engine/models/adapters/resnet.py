"""ResNet-18/50 through transformers (`microsoft/resnet-18|50`): a neuron is one output
channel of a residual block, after its final ReLU; blocks count over all stages."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neurolens.engine.models.adapters.base import Adapter, Batch, ModelError
from neurolens.probes.types import Example

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImagePrep:
    """Resize + normalise a uint8 image batch in torch (no per-pixel Python)."""

    def __init__(self, size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        self.size = int(size)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(cls, ref: str, local_only: bool) -> ImagePrep:
        try:
            from transformers import AutoImageProcessor

            p = AutoImageProcessor.from_pretrained(ref, local_files_only=local_only)
        except Exception:  # no preprocessor config: ImageNet defaults
            return cls()
        size = getattr(p, "size", None)
        if isinstance(size, int):
            edge = size
        else:
            get = (lambda k: size.get(k)) if hasattr(size, "get") else (lambda k: getattr(size, k, None))
            edge = get("shortest_edge") or get("height") or 224
        return cls(int(edge), getattr(p, "image_mean", None) or IMAGENET_MEAN,
                   getattr(p, "image_std", None) or IMAGENET_STD)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
        return (x - self.mean) / self.std


def load_images(examples: Sequence[Example]) -> np.ndarray:
    from neurolens.probes import load_image

    imgs = [load_image(e.image or e.text or "") for e in examples]
    h = max(i.shape[0] for i in imgs)
    w = max(i.shape[1] for i in imgs)
    if any(i.shape[:2] != (h, w) for i in imgs):  # custom folders: bring to one size first
        from PIL import Image

        imgs = [np.asarray(Image.fromarray(i).resize((w, h))) for i in imgs]
    return np.stack(imgs)


class ResNetAdapter(Adapter):
    family = "resnet"
    modality = "vision"
    site_is_stream = True
    model_types = ("resnet",)

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self._blocks = [blk for stage in self.base().encoder.stages for blk in stage.layers]

    @classmethod
    def load(cls, ref: str, *, name: str, device: torch.device, dtype: torch.dtype,
             local_only: bool) -> Adapter:
        from transformers import AutoConfig, ResNetForImageClassification, ResNetModel

        config = AutoConfig.from_pretrained(ref, local_files_only=local_only)
        has_head = any(a.endswith("ForImageClassification") for a in config.architectures or [])
        klass = ResNetForImageClassification if has_head else ResNetModel
        model = klass.from_pretrained(ref, local_files_only=local_only, dtype=dtype)
        model.eval().to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model, ImagePrep.from_pretrained(ref, local_only), name=name, ref=ref,
                   kind="vision", device=device, dtype=dtype)

    def base(self) -> nn.Module:
        return getattr(self.model, "resnet", self.model)

    @property
    def n_layers(self) -> int:
        return len(self._blocks)

    def n_neurons(self, layer: int) -> int:
        convs = [m for m in self._blocks[layer].layer.modules() if isinstance(m, nn.Conv2d)]
        return int(convs[-1].out_channels)

    def neuron_module(self, layer: int) -> nn.Module:
        return self._blocks[layer]

    def _class_ids(self, examples: Sequence[Example]) -> np.ndarray:
        label2id = {str(k).lower(): int(v) for k, v in (self.model.config.label2id or {}).items()}
        out = np.full(len(examples), -1, dtype=np.int64)
        for i, e in enumerate(examples):
            t = (e.target or "").strip().lower()
            if t.isdigit():
                out[i] = int(t)
            elif t in label2id:
                out[i] = label2id[t]
        return out

    def batches(self, examples: Sequence[Example], batch_size: int, *,
                with_targets: bool = False) -> Iterator[Batch]:
        labels = np.array([e.label for e in examples], dtype=np.int64)
        tgt = self._class_ids(examples) if with_targets else None
        for s in range(0, len(examples), batch_size):
            idx = np.arange(s, min(s + batch_size, len(examples)))
            pix = self.processor(load_images([examples[i] for i in idx])).to(self.dtype)
            yield Batch(inputs={"pixel_values": pix}, index=torch.from_numpy(idx),
                        labels=torch.from_numpy(labels[idx]),
                        target_ids=None if tgt is None else torch.from_numpy(tgt[idx]),
                        n_tokens=len(idx))

    def features(self, batch: Batch) -> torch.Tensor:
        return self.base()(**batch.inputs).pooler_output.flatten(1).float()

    def target_logprobs(self, batch: Batch) -> torch.Tensor:
        if not hasattr(self.model, "classifier"):
            raise ModelError(f"{self.name} has no classification head to read a class from")
        logits = self.model(**batch.inputs).logits.float()
        rows = torch.arange(logits.shape[0], device=logits.device)
        return torch.log_softmax(logits, -1)[rows, batch.target_ids.clamp_min(0)]

    @property
    def has_target_head(self) -> bool:
        return hasattr(self.model, "classifier")

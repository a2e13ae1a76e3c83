"""What a run is asked to do (`RunConfig`: the CLI's flags and the API's keywords, one place),
and where outputs go: `--out`, else $NEUROLENS_OUT, else ./neurolens-out (never the checkout's
source folders; resolved once, in neurolens.store.paths)."""
from __future__ import annotations

from dataclasses import dataclass

from neurolens.store.paths import out_dir, reports_dir, store_dir

__all__ = ["RunConfig", "out_dir", "reports_dir", "store_dir"]


@dataclass
class RunConfig:
    model: str
    concept: str | None = None
    probes: str | None = None
    layers: list[int] | None = None
    pooling: str = "mean"
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None    # accelerate big-model inference: auto, balanced, ...
    max_memory: str | None = None    # SIZE for every device, or dev=SIZE,...
    batch_size: int = 32
    seed: int = 0
    ablate: bool = False
    ablate_methods: str | tuple[str, ...] = ("zero",)   # a tuple or "zero,mean,range"
    ablate_controls: int = 99   # random controls per tested set (engine/causal/ablation/stage.N_RANDOM)
    ablate_all_controls: bool = False   # every control, not only those the sequential test reads
    top_k: int = 10
    importance: bool = True
    report: bool = True
    relabel: bool = True   # rebuild the model's labels now (a sweep does it once at the end)
    out: str | None = None

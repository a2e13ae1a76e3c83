"""The model's own layers on faster kernels: the same functions, computed in fewer passes.

* Dense layers on the CPU through oneDNN instead of the BLAS behind `torch.addmm`.
* GPT-2's tanh-approximated GELU (transformers' `NewGELUActivation`, five elementwise
  passes written in Python) as torch's one fused kernel of the same formula; both are
  within 5e-7 of a float64 reference.
* The heap kept (`keep_heap`): glibc hands every block over its adaptive threshold back to
  the kernel when torch frees it, so each forward faults its activations in again, page by
  page (2.2 million page faults, about 8 % of a GPT-2-small extraction on a 2-core EPYC).
  Blocks up to 32 MiB now stay in the process and are reused; peak RSS is unchanged.

Dense layers:

Every forward NeuroLens runs (extraction, importance, ablation) spends most of its time in
the model's dense layers. On the CPU, torch sends an fp32 `nn.Linear` to MKL's sgemm,
which takes a generic path on CPUs that are not Intel's: on a 2-core AMD EPYC it runs at
about 135 GFLOP/s where oneDNN (also inside torch, with its own ISA detection) runs the
same product at about 240 (on a 2-core Xeon both run at about 330). `use_onednn` switches a
model's `nn.Linear` and transformers' `Conv1D` (GPT-2's layers) to oneDNN's fp32 kernel, in
strict fp32 (no bf16 down-conversion): the results are the same products summed in another
order, equal to rounding. A Conv1D stores its weight as [in, out], whose transpose oneDNN
copies on every call; whether that still beats torch's own product depends on the CPU (on
the EPYC it does, on the Xeon it made GPT-2-small's forward 25 % slower than torch's own),
so `conv1d_prefers_onednn` times both for each weight shape and the faster one is used.

The two kernels round differently, so the choice changes the activations in their last
bits, and a timing race flips with the machine's load. The choice is therefore timed once
per machine: the first process to need it writes it to the NeuroLens cache
($NEUROLENS_CACHE/kernels, else ~/.cache/neurolens/kernels), keyed by the CPU's model and
flags, torch's version and the shape, and every later process (a rerun, a resume, a
worker) reads it back; NEUROLENS_CONV1D=onednn|torch fixes it by hand. `choices` names the
kernels a model computes with: the runs table records them, and extraction keys its
partitions by them, so no result mixes numbers computed on different kernels.

The switch is per call: a layer whose input is not an fp32 CPU tensor (an accelerator, a
half-precision model, weights that accelerate moves in and out) takes torch's own path,
and so does anything that needs a gradient for the weights. Set NEUROLENS_ONEDNN=0 to turn
it off.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import platform
import tempfile
import time
import types
from pathlib import Path

import torch
from torch import nn

__all__ = ["available", "choices", "choices_tag", "conv1d_prefers_onednn", "keep_heap", "placement",
           "use_fast_kernels", "use_onednn"]


@functools.cache
def _op():
    """torch's oneDNN linear (looked up once: every dense call of every forward asks)."""
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def available() -> bool:
    """oneDNN's linear kernel exists in this torch build and has not been turned off."""
    if os.environ.get("NEUROLENS_ONEDNN", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        return bool(torch.backends.mkldnn.is_available()) and _op() is not None
    except Exception:  # noqa: BLE001 - an unusual build simply keeps torch's own path
        return False


class _Dense(torch.autograd.Function):
    """y = x Wᵀ + b on oneDNN; the backward gives ∂/∂x only (the weights are frozen)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(w)
        return _op()(x, w, b, "none", [], "")

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return g @ w, None, None


def _dense(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor | None:
    """oneDNN's x Wᵀ + b where it applies (w: [out, in]), else None."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32
            or w.device.type != "cpu" or w.requires_grad or (b is not None and b.requires_grad)
            or x.dim() < 2 or x.is_sparse):
        return None
    if x.requires_grad and torch.is_grad_enabled():
        return _Dense.apply(x, w, b)
    return _op()(x, w, b, "none", [], "")


class _OneDNNLinear(nn.Linear):
    """An `nn.Linear` (same parameters, hooks and isinstance) whose fp32 CPU forward is oneDNN's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _dense(x, self.weight, self.bias)
        return super().forward(x) if y is None else y


def _conv1d_forward(self, x: torch.Tensor) -> torch.Tensor:
    """transformers' Conv1D (x W + b, W: [in, out]) on oneDNN."""
    y = _dense(x, self.weight.t(), self.bias)
    return super(type(self), self).forward(x) if y is None else y


def _fused_gelu_forward(self, x: torch.Tensor) -> torch.Tensor:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) in one kernel."""
    return nn.functional.gelu(x, approximate="tanh")


@functools.lru_cache(maxsize=None)
def _swap(module: str, name: str, forward) -> tuple[type | None, type | None]:
    """(transformers' class `module.name`, its subclass with `forward`), or Nones when
    this transformers has no such class."""
    try:
        base = getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001
        return None, None
    return base, type(f"_Fast{name}", (base,), {"forward": forward, "__doc__": forward.__doc__})


def _best_of(f, reps: int = 3) -> float:
    f()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def _time_conv1d(n_in: int, n_out: int) -> bool:
    """Whether oneDNN beats torch's own `addmm` on this CPU for a Conv1D weight [n_in, n_out]
    as transformers stores it, timed now (a few milliseconds; the answer flips under load).

    oneDNN reads the [out, in] transpose, a strided view, and copies it on every call:
    on a 2-core EPYC it still wins (MKL's generic path is slower), on a 2-core Xeon it runs
    at half MKL's speed. Re-laying the weight would cost a second copy of every weight in
    memory (the first stays mapped from the checkpoint), so the faster kernel is chosen."""
    g = torch.Generator().manual_seed(0)     # the caller's random state stays as it was
    x = torch.randn(256, n_in, generator=g)
    w = torch.randn(n_in, n_out, generator=g) / n_in ** 0.5
    b = torch.zeros(n_out)
    with torch.no_grad():
        t_blas = _best_of(lambda: torch.addmm(b, x, w))
        t_dnn = _best_of(lambda: _op()(x, w.t(), b, "none", [], ""))
    return t_dnn < t_blas


def cache_dir() -> Path:
    """Where the kernel choices of this machine live: $NEUROLENS_CACHE/kernels, else
    ~/.cache/neurolens/kernels (the same root as the converted GGUF files)."""
    base = os.environ.get("NEUROLENS_CACHE") or Path("~/.cache/neurolens").expanduser()
    return Path(base) / "kernels"


@functools.cache
def machine() -> dict[str, str]:
    """What a kernel's speed depends on: the CPU's model and features, and torch's build
    (which carries its MKL and oneDNN)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())          # the first processor's
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or platform.machine()
    flags = " ".join(sorted((info.get("flags") or info.get("Features") or "").split()))
    return {"cpu": model, "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "torch": torch.__version__}


def _choice_file(n_in: int, n_out: int, folder: Path | None = None) -> Path:
    key = json.dumps({**machine(), "shape": [n_in, n_out]}, sort_keys=True)
    return (folder or cache_dir()) / f"conv1d-{n_in}x{n_out}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _read_choice(f: Path) -> bool | None:
    try:
        v = json.loads(f.read_text()).get("onednn")
    except (OSError, ValueError, AttributeError):
        return None
    return v if isinstance(v, bool) else None


def _store_choice(f: Path, onednn: bool, n_in: int, n_out: int) -> bool | None:
    """Write the choice unless another process wrote one first (a hard link never replaces
    a file); returns the choice the file holds, None when the cache cannot be written."""
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".conv1d-", dir=f.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump({**machine(), "shape": [n_in, n_out], "onednn": onednn}, fh)
        try:
            os.link(tmp, f)
        except FileExistsError:
            pass                              # the first writer's choice is everyone's
        finally:
            os.unlink(tmp)
    except OSError:
        return None
    return _read_choice(f)


def conv1d_prefers_onednn(n_in: int, n_out: int) -> bool:
    """Whether a Conv1D weight [n_in, n_out] runs on oneDNN: NEUROLENS_CONV1D when set,
    else the choice stored for this machine, timed and stored by the first process that
    needs it. Where the cache cannot be written, torch's own kernel (a fixed rule: a timed
    choice that is not kept could differ in the next process). Remembered per cache folder,
    so a process that moves $NEUROLENS_CACHE reads what the processes using it read."""
    fixed = os.environ.get("NEUROLENS_CONV1D", "").strip().lower()
    if fixed in ("onednn", "torch"):
        return fixed == "onednn"
    return _stored_choice(n_in, n_out, str(cache_dir()))


@functools.cache
def _stored_choice(n_in: int, n_out: int, folder: str) -> bool:
    f = _choice_file(n_in, n_out, Path(folder))
    got = _read_choice(f)
    if got is None:
        got = _store_choice(f, _time_conv1d(n_in, n_out), n_in, n_out)
    return bool(got)


def _measured_for(w: torch.Tensor) -> bool:
    """oneDNN for this Conv1D weight: only an fp32 weight on the CPU (or offloaded, moved
    there per call) can take it, and only then is the choice worth timing."""
    return (w.dim() == 2 and w.dtype == torch.float32 and w.device.type in ("cpu", "meta")
            and conv1d_prefers_onednn(*w.shape))


def use_onednn(model: nn.Module) -> int:
    """Switch the model's dense layers to oneDNN (see the module docstring); returns how
    many were switched (0 when oneDNN is not available)."""
    if not available():
        return 0
    conv, conv_fast = _swap("transformers.pytorch_utils", "Conv1D", _conv1d_forward)
    n = 0
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = _OneDNNLinear
        elif conv is not None and type(m) is conv and _measured_for(m.weight):
            m.__class__ = conv_fast
        else:
            continue
        n += 1
        if "_old_forward" in m.__dict__:
            # accelerate's dispatch hook (--device-map) calls the forward it found when it
            # was added: point it at this class's, so offloaded layers run the same kernel
            m._old_forward = types.MethodType(type(m).forward, m)
    return n


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's mallopt parameters
HEAP_BLOCK = 32 << 20     # glibc's largest mmap threshold on 64-bit: blocks below it stay
HEAP_TRIM = 256 << 20     # free memory kept at the heap's top before it is given back


@functools.cache
def keep_heap() -> bool:
    """Keep freed activation blocks in the process (glibc only; once per process; set
    NEUROLENS_HEAP=0 to leave the allocator alone). True when applied."""
    if os.environ.get("NEUROLENS_HEAP", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
            return False                                   # not glibc (musl, macOS)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, HEAP_TRIM))
    except Exception:  # noqa: BLE001 - any other platform keeps its allocator as it is
        return False


def use_fast_kernels(model: nn.Module) -> dict[str, int]:
    """Dense layers on oneDNN (CPU, fp32), the tanh GELU fused and the heap kept; how many
    of each."""
    slow, fused = _swap("transformers.activations", "NewGELUActivation", _fused_gelu_forward)
    n_gelu = 0
    if slow is not None:
        for m in model.modules():
            if type(m) is slow:
                m.__class__ = fused
                n_gelu += 1
    return {"dense": use_onednn(model), "gelu": n_gelu, "heap": int(keep_heap())}


def choices(model: nn.Module) -> dict[str, object]:
    """The kernels the model's layers compute with, as switched here: besides the weights,
    the inputs and torch's build, what its numbers depend on. `threads` is torch's intra-op
    thread count (fixed by the machine's cores unless set), recorded but not part of
    `choices_tag`, so a run and its in-process reference agree on what they computed."""
    conv, conv_fast = _swap("transformers.pytorch_utils", "Conv1D", _conv1d_forward)
    slow, fused = _swap("transformers.activations", "NewGELUActivation", _fused_gelu_forward)
    linear: set[str] = set()
    gelu: set[str] = set()
    conv1d: dict[str, str] = {}
    for m in model.modules():
        t = type(m)
        if t is _OneDNNLinear or t is nn.Linear:
            linear.add("onednn" if t is _OneDNNLinear else "torch")
        elif conv is not None and t in (conv, conv_fast):
            conv1d["x".join(map(str, m.weight.shape))] = "onednn" if t is conv_fast else "torch"
        elif slow is not None and t in (slow, fused):
            gelu.add("fused" if t is fused else "torch")
    out: dict[str, object] = {}
    if linear:
        out["linear"] = "+".join(sorted(linear))
    if conv1d:
        out["conv1d"] = dict(sorted(conv1d.items()))
    if gelu:
        out["gelu_tanh"] = "+".join(sorted(gelu))
    out["placement"] = placement(model)
    out["threads"] = torch.get_num_threads()
    return out


def placement(model: nn.Module) -> str:
    """Where the layers compute: a device (`cpu`, `cuda:0`), or for a `--device-map` model
    the count of its map's entries on each device, which accelerate chooses by the free
    memory it finds at load. Disk-offloaded weights are brought to the CPU and computed
    there, so they count as `cpu`."""
    hf_map = getattr(model, "hf_device_map", None)
    if not hf_map:
        p = next(model.parameters(), None)
        return str(p.device) if p is not None else "cpu"
    count: dict[str, int] = {}
    for d in hf_map.values():
        name = f"cuda:{d}" if isinstance(d, int) else "cpu" if str(d) in ("disk", "meta") else str(d)
        count[name] = count.get(name, 0) + 1
    return ",".join(f"{k}={v}" for k, v in sorted(count.items()))


def choices_tag(model: nn.Module) -> str:
    """A short digest of `choices` (threads aside): stored results carry it in their key."""
    c = {k: v for k, v in choices(model).items() if k != "threads"}
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:12]

"""What the benchmarks share: machine and versions, timing, interleaved repetitions,
medians, peak RSS of a job in its own process, a markdown table, the results writer.

Peak memory of a job is measured by running it in a fresh Python process
(``measure_job``): the child reports its RSS after imports (the baseline) and the
time of the job's measured part; the parent reads the child's peak RSS from the
kernel (``os.wait4``), so nothing is sampled and nothing is missed.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_MARK = "@@bench-job@@ "


# -- machine and versions ---------------------------------------------------------

def machine() -> dict:
    """The machine a result was measured on, with its load at the time."""
    info: dict = {"platform": platform.platform(), "python": platform.python_version(),
                  "processor": cpu_model(), "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags()}
    try:
        info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["accelerator"] = torch.cuda.get_device_name(0)
    return info


def _cpuinfo(key: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (figures from one CPU say nothing about another)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The ISA extensions that change the dense kernels' speed: AVX-512, its bf16, AMX."""
    have = set((_cpuinfo("flags") or "").split())
    return sorted(have & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"})


def versions(*packages: str) -> dict:
    out = {"python": platform.python_version()}
    for p in ("neurolens", "torch", "numpy", *packages):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def device_name(dev) -> str:
    import torch

    dev = torch.device(dev)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def sync(dev=None) -> None:
    """Wait for queued accelerator work, so a timer measures it."""
    import torch

    if torch.cuda.is_available() and (dev is None or torch.device(dev).type == "cuda"):
        torch.cuda.synchronize()


# -- timing -------------------------------------------------------------------------

def timed(fn: Callable[[], object], dev=None) -> tuple[float, object]:
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t0, out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def interleaved(jobs: Mapping[str, Callable[[], object]], reps: int, *, warmup: int = 1,
                dev=None) -> dict[str, list[float]]:
    """Run every job `reps` times, interleaved (A B, B A, A B, ...) so that drift in
    the machine's load hits all of them alike; warm-up runs are not timed."""
    names = list(jobs)
    for _ in range(warmup):
        for n in names:
            jobs[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            s, _ = timed(jobs[n], dev)
            times[n].append(s)
    return times


def summarize(times: Sequence[float], work: float | None = None, unit: str = "tokens") -> dict:
    out = {"median_s": median(times), "runs_s": [round(t, 4) for t in times],
           "min_s": min(times), "max_s": max(times)}
    if work is not None:
        out[f"{unit}_per_s"] = work / out["median_s"]
    return out


# -- a job in its own process: time and peak memory ------------------------------------

def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class Job:
    """Handed to a job function running in a child: `job.imported()` after its imports
    (the memory baseline), `job.ready()` after set-up (model construction), `job.done(**info)`
    after the measured part. The time reported is ready -> done."""

    def __init__(self) -> None:
        self.after_imports_mb = rss_mb()
        self.t_ready: float | None = None
        self.t_done: float | None = None
        self.info: dict = {}

    def imported(self) -> None:
        self.after_imports_mb = rss_mb()

    def ready(self) -> None:
        sync()
        self.ready_mb = rss_mb()
        self.t_ready = time.perf_counter()

    def done(self, **info) -> None:
        sync()
        self.t_done = time.perf_counter()
        self.info.update(info)


def _child(target: str, kwargs: dict) -> None:
    """Entry point of a job's child process (see measure_job)."""
    mod, fn = target.split(":")
    func = getattr(importlib.import_module(mod), fn)
    job = Job()
    func(job, **kwargs)
    if job.t_ready is None or job.t_done is None:
        raise RuntimeError(f"{target} did not call job.ready() and job.done()")
    out = {"after_imports_mb": job.after_imports_mb, "ready_mb": job.ready_mb,
           "seconds": job.t_done - job.t_ready, **job.info}
    print(_MARK + json.dumps(out), flush=True)


def measure_job(target: str, timeout: float = 1800, **kwargs) -> dict:
    """Run `module:function(job, **kwargs)` in a fresh interpreter. Returns the job's own
    figures plus `peak_rss_mb` (the child's lifetime peak, from the kernel) and
    `peak_delta_mb` (that peak minus the child's RSS after imports)."""
    code = ("import json,sys; from benchmarks.common import _child; "
            "_child(sys.argv[1], json.loads(sys.argv[2]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    r = run_measured([sys.executable, "-c", code, target, json.dumps(kwargs)], timeout=timeout, env=env)
    if r["status"] != 0:
        tail = "\n".join(r["stderr"].strip().splitlines()[-15:])
        why = f"timed out after {timeout:.0f} s" if r["timed_out"] else f"exited with status {r['status']}"
        raise RuntimeError(f"job {target} {why}:\n{tail}")
    line = next((l for l in r["stdout"].splitlines() if l.startswith(_MARK)), None)
    if line is None:
        raise RuntimeError(f"job {target} printed no result")
    res = json.loads(line[len(_MARK):])
    res["peak_rss_mb"] = r["peak_rss_mb"]
    res["peak_delta_mb"] = None if r["peak_rss_mb"] is None else r["peak_rss_mb"] - res["after_imports_mb"]
    return res


class _Popen(subprocess.Popen):
    """A Popen that reaps with os.wait4 and keeps the child's rusage."""

    def _try_wait(self, wait_flags):  # noqa: D401 - CPython hook
        try:
            pid, sts, ru = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            pid, sts, ru = self.pid, 0, None
        if pid == self.pid:
            self._nl_rusage = ru
        return (pid, sts)


def run_measured(cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
                 cwd: Path | str | None = None) -> dict:
    """Run a command; wall seconds, exit status, its peak RSS (kernel), output tails."""
    t0 = time.perf_counter()
    proc = _Popen(list(cmd), cwd=cwd or ROOT, env=dict(env) if env else None,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        timed_out = True
    wall = time.perf_counter() - t0
    ru = getattr(proc, "_nl_rusage", None)
    return {"status": proc.returncode, "timed_out": timed_out, "wall_s": wall,
            "peak_rss_mb": ru.ru_maxrss / 1024 if ru else None, "stdout": out, "stderr": err}


# -- results --------------------------------------------------------------------------

def results_path(name: str, smoke: bool, results_dir: Path | str | None = None) -> Path:
    d = Path(results_dir) if results_dir else RESULTS_DIR
    return d / (f"{name}.smoke.json" if smoke else f"{name}.json")


def write_result(result: dict, path: Path) -> Path:
    """Atomic write: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]],
                   align: Sequence[str] | None = None) -> str:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(c: object) -> str:
    if c is None:
        return "–"
    if isinstance(c, float):
        if abs(c) >= 1000:
            return f"{c:,.0f}"
        if abs(c) >= 10:
            return f"{c:.1f}"
        return f"{c:.3g}" if abs(c) < 1 else f"{c:.2f}"
    return str(c)


# -- a GPT-2-shaped random checkpoint and fixed-length synthetic texts --------------------

GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
GPT2_TINY = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=64)
SPECIALS = ["<|endoftext|>", "<unk>"]


def vocabulary(n_words: int) -> list[str]:
    return SPECIALS + [f"w{i}" for i in range(n_words)]


def make_gpt2_checkpoint(out: Path | str, *, n_layer: int, n_embd: int, n_head: int,
                         vocab_size: int, n_positions: int, n_words: int = 4000, seed: int = 0) -> Path:
    """A randomly initialised GPT-2 LM (seeded) and a word-level fast tokenizer, saved so
    that `registry.load(out)` loads it. Token ids: 0 = end of text, 1 = unknown, 2.. words."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    words = vocabulary(min(n_words, vocab_size - len(SPECIALS)))
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=n_positions,
                                   eos_token=SPECIALS[0], bos_token=SPECIALS[0], pad_token=SPECIALS[0],
                                   unk_token="<unk>")
    fast.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab_size,
                        n_positions=n_positions, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                        architectures=["GPT2LMHeadModel"])
    GPT2LMHeadModel(config).save_pretrained(out)
    return out


def token_ids(n: int, n_tokens: int, n_words: int, *, seed: int = 0):
    """[n, n_tokens] word ids (2..n_words+1) and labels: the first half of the examples
    (shuffled) carry one of 20 'concept' words at a random position."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(len(SPECIALS) + 20, len(SPECIALS) + n_words, size=(n, n_tokens))
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1
    rng.shuffle(labels)
    pos = rng.integers(0, n_tokens, size=n)
    concept = rng.integers(len(SPECIALS), len(SPECIALS) + 20, size=n)
    rows = np.flatnonzero(labels)
    ids[rows, pos[rows]] = concept[rows]
    return ids, labels


def examples_from_ids(ids, labels, n_words: int):
    """Probe examples whose texts tokenize back to exactly `ids` (one word per token)."""
    from neurolens.probes.types import Example

    words = vocabulary(n_words)
    return [Example(example_id=i, label=int(labels[i]), group=f"g{i % 10}", split="train",
                    text=" ".join(words[t] for t in row)) for i, row in enumerate(ids)]


def _selftest_job(job, mb: int = 100) -> None:
    """A job that holds `mb` MB for a moment (the suite's own test of measure_job)."""
    job.imported()
    job.ready()
    block = bytearray(mb * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    job.done(held_mb=mb)


def main(name: str, run, markdown, argv=None, *, doc: str = "", smoke_help: str = "tiny sizes (seconds)") -> int:
    """The `python benchmarks/bench_X.py [--smoke]` entry point every benchmark shares."""
    import argparse

    ap = argparse.ArgumentParser(description=(doc or name).splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help=smoke_help)
    a = ap.parse_args(argv)
    r = run(a.smoke)
    print(markdown(r))
    print("wrote", write_result(r, results_path(name, a.smoke)))
    return 0

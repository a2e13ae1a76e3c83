"""The benchmark suite: every benchmark's smoke size runs through the runner and leaves a
result with the fields the suite promises; a broken benchmark makes the runner fail."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from benchmarks.__main__ import discover  # noqa: E402

BENCHES = sorted(discover())
# `make bench-smoke` (run by CI) runs every smoke size; the test suite runs the quick ones
# through the runner, and the model-heavy ones only where NEUROLENS_TEST_ALL_BENCHES=1.
QUICK = {"scoring", "queries", "extract", "confidence"}
ALL = os.environ.get("NEUROLENS_TEST_ALL_BENCHES") == "1"


def _runner(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 600):
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), (env or {}).get("PYTHONPATH"), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_discovers_the_suite():
    for name in ("extract", "peer", "sweep", "scoring", "queries"):
        assert name in BENCHES


@pytest.mark.parametrize("name", BENCHES)
def test_smoke_result_has_the_fields(name, tmp_path):
    if name not in QUICK and not ALL:
        pytest.skip("model-heavy smoke benchmark: run by `make bench-smoke` in CI")
    p = _runner("--smoke", "--only", name, "--results", str(tmp_path))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    path = tmp_path / f"{name}.smoke.json"
    assert path.is_file(), p.stdout
    assert not (tmp_path / f"{name}.json").exists(), "a smoke run must not write the full result"
    r = json.loads(path.read_text())
    assert r["benchmark"] == name and r["smoke"] is True
    for key in ("machine", "versions", "runner"):
        assert key in r, key
    assert r["runner"]["wall_s"] > 0 and r["runner"]["peak_rss_mb"] > 0
    assert "| benchmark | status |" in p.stdout  # the table of all
    if name == "peer":
        assert {"neurolens-float32", "run-float32", "rundef-float32"} <= set(r["rows"])
        nl = r["rows"]["neurolens-float32"]
        assert nl["seconds"]["tokens_per_s"] > 0 and nl["peak_rss_mb"] > 0
        for j in ("run-float32", "rundef-float32"):   # the user's path, timed from its runs row
            assert r["rows"][j]["tokens"] == nl["tokens"] and r["rows"][j]["seconds"]["median_s"] > 0
        if r["skipped"]:
            assert "transformer_lens" in r["skip_reason"] and r["ratio"] is None
        else:
            assert r["ratio"] > 0 and r["auc_check_max_abs_diff"] < 1e-9
            assert r["rows"]["peerstop-float32"]["tokens"] == nl["tokens"] and r["ratios"]["run_vs_peerstop"] > 0
    if name == "extract":
        assert {x["dtype"] for x in r["rows"]} == {"float32", "bfloat16"}
        assert all(x["ratio"] > 0 for x in r["rows"])
    if name == "run_ablation":
        assert r["runs"] and all(x["seconds_ablate"] > 0 and x["ratio"] > 0 for x in r["runs"])
        # the floor is the products alone: a stage that beat it would mean a wrong count
        assert r["ablation_flops"] > 0 and 0 < r["floor_s"] < r["median"]["seconds_ablate"]
    if name == "sweep":
        assert r["contender"]["median_s"] > 0 and r["baseline"]["median_s"] > 0


def test_a_broken_benchmark_fails_the_run_and_others_still_report(tmp_path):
    (tmp_path / "bench_broken_probe.py").write_text("def run(smoke=False):\n    raise RuntimeError('boom')\n")
    (tmp_path / "bench_fine_probe.py").write_text(
        "def run(smoke=False):\n    return {'ratio': 1.5, 'sizes': {'n': 1}}\n")
    res = tmp_path / "results"
    p = _runner("--smoke", "--only", "broken,fine", "--module", "broken=bench_broken_probe",
                "--module", "fine=bench_fine_probe", "--results", str(res),
                env={"PYTHONPATH": str(tmp_path)})
    assert p.returncode == 1
    assert "boom" in p.stdout and "broken" in p.stderr
    fine = json.loads((res / "fine.smoke.json").read_text())
    assert fine["ratio"] == 1.5 and "machine" in fine and "versions" in fine
    assert not (res / "broken.smoke.json").exists()


def test_unknown_benchmark_is_a_usage_error():
    p = _runner("--only", "nope")
    assert p.returncode == 2 and "unknown benchmark" in p.stderr


def test_interleaved_medians_and_table():
    calls = []
    t = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B, B A, A B
    assert len(t["a"]) == len(t["b"]) == 3
    s = common.summarize([3.0, 1.0, 2.0], work=10)
    assert s["median_s"] == 2.0 and s["tokens_per_s"] == 5.0
    md = common.markdown_table(["x", "y"], [["a", 1234.5], ["b", None]])
    assert md.splitlines()[2] == "| a | 1,234 |" and "–" in md


def test_measure_job_reports_peak_memory_of_its_own_process():
    r = common.measure_job("benchmarks.common:_selftest_job", mb=200)
    assert r["seconds"] > 0
    assert r["peak_delta_mb"] >= 150, r  # the job's 200 MB allocation, seen by the kernel


def test_gpu_script_says_so_without_a_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run the benchmarks")
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path / "gpu")],
                       env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "no CUDA device" in p.stderr
    assert not (tmp_path / "gpu").exists()


def test_the_full_sizes_name_concepts_that_exist():
    """A full size runs for an hour: a renamed concept must fail here, not at its start."""
    import importlib

    from neurolens.probes import list_concepts

    known = {c.name for c in list_concepts()}
    for name in BENCHES:
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        named = list(getattr(mod, "CONCEPTS", [])) + [getattr(mod, "CONCEPT", "royalty")]
        assert set(named) <= known, (name, set(named) - known)

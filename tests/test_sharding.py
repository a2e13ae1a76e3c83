"""Sharded extraction: two CPU processes on gloo write exactly what one process writes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from neurolens.store import Store, read_layer

SCRIPT = textwrap.dedent("""
    import sys
    from neurolens.pipeline import RunConfig, run
    model, probes, out = sys.argv[1:4]
    run(RunConfig(model=model, probes=probes, out=out, importance=False, report=False, batch_size=8))
""")


def _run(cmd: list[str], tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_equal_one(planted_factory, tmp_path):
    pm = planted_factory("bert")
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(script), str(pm.path), str(pm.probe_file), str(one)], tmp_path)
    with socket.socket() as sk:  # a free port for the rendezvous (port 0 hangs torchrun)
        sk.bind(("127.0.0.1", 0))
        port = str(sk.getsockname()[1])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
          "--master_addr", "127.0.0.1", "--master_port", port,
          str(script), str(pm.path), str(pm.probe_file), str(two)], tmp_path)
    s1, s2 = Store(one / "store"), Store(two / "store")
    name = pm.path.name
    n_files = 0
    for layer in range(3):
        i1, a1 = read_layer(s1, name, pm.probes.concept, layer)
        i2, a2 = read_layer(s2, name, pm.probes.concept, layer)
        assert np.array_equal(i1, i2)
        assert np.array_equal(a1.view(np.uint16), a2.view(np.uint16))  # bit for bit
        n_files += len(list(s2.partition_dir("activations", {"model": name, "concept": pm.probes.concept,
                                                             "layer": layer}).glob("*.parquet")))
    assert n_files == 6  # each process wrote its own partition files
    assert s2.marker("activations", {"model": name, "concept": pm.probes.concept, "layer": 0})["world_size"] == 2
    # the runs row counts every process's tokens, not rank 0's alone
    import pyarrow.parquet as pq

    tok = [pq.read_table(next((s.root / "runs").glob("run-*.parquet"))).column("tokens")[0].as_py()
           for s in (s1, s2)]
    assert tok[0] > 0 and tok[0] == tok[1], tok

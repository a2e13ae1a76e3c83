"""Run pytest several times in a row while every core is kept busy (docs/determinism.md).

One `while True: pass` process per core runs for the whole session, started here and stopped
by pid at the end, so every run of the tests competes with them for the CPU, as it would on a
machine shared with other work. Each run's outcome is printed; the exit status is 0 only
when every run passed.

    python benchmarks/under_load.py --times 5 -- tests/test_resume.py tests/test_extract.py
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--times", type=int, default=5, help="how many runs in a row")
    ap.add_argument("--spinners", type=int, default=os.cpu_count() or 2, help="busy processes (default: one per core)")
    ap.add_argument("pytest_args", nargs="*", help="what pytest runs (after --)")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # a `timeout` still stops the spinners
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.spinners)]
    results = []
    try:
        for i in range(a.times):
            t = time.perf_counter()
            rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *a.pytest_args])
            results.append(rc)
            print(f"run {i + 1}/{a.times}: {'passed' if rc == 0 else f'FAILED (exit {rc})'} "
                  f"in {time.perf_counter() - t:.0f} s with {a.spinners} busy processes", flush=True)
    finally:
        for p in spin:
            p.kill()
        for p in spin:
            p.wait()
    print(f"{results.count(0)} of {a.times} runs passed")
    return 0 if results and all(rc == 0 for rc in results) else 1


if __name__ == "__main__":
    sys.exit(main())

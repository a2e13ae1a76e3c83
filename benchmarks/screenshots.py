"""Screenshots of neuron pages in headless Chromium, for the README and docs/scans.md.

    python benchmarks/screenshots.py --out DIR --model minilm L5.N1096 docs/img/minilm-L5.N1096.png

Writes the page as `neurolens neuron` does, loads it in the same headless Chromium the
browser tests drive (no network, console errors refused), and saves the top of the page
(1280 px wide, at most `--height` px tall) as a PNG.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def shoot(out: str, model: str, neuron: str, png: Path, height: int) -> Path:
    from test_browser import Browser

    from neurolens.commands.neuron import parse_neuron
    from neurolens.scans import neuron_page

    layer, n = parse_neuron(neuron)
    page = Path(neuron_page(model, layer, n, out=out))
    profile = Path(tempfile.mkdtemp(prefix="nl-shot-"))
    b = Browser(profile)
    try:
        b.open_page()
        b.load(page.as_uri())
        errors = b.errors()
        if errors:
            raise SystemExit(f"{page}: {errors[0]}")
        b.screenshot(png)
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)
    from PIL import Image

    with Image.open(png) as im:
        if im.height > height:
            im.crop((0, 0, im.width, height)).save(png, optimize=True)
    return png


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("neuron")
    p.add_argument("png", type=Path)
    p.add_argument("--height", type=int, default=1400)
    a = p.parse_args()
    print(shoot(a.out, a.model, a.neuron, a.png, a.height))


if __name__ == "__main__":
    main()

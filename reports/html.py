"""Page assembly: the jinja2 environment (autoescaped), safe JSON embedding, and the
inlined Vega/Vega-Lite/vega-embed bundle, so every page works with the network off."""
from __future__ import annotations

import base64
import functools
import io
import json
import os
from importlib import resources
from pathlib import Path
from collections.abc import Callable
from typing import Any

import jinja2
from markupsafe import Markup

_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                 "\u2029": "\\u2029"}


def safe_json(obj: Any) -> Markup:
    """JSON that can sit inside <script type="application/json">: no `</script>` break-out."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for a, b in _JSON_ESCAPES.items():
        s = s.replace(a, b)
    return Markup(s)


def _cache_dir() -> Path:
    base = os.environ.get("NEUROLENS_CACHE") or os.environ.get("XDG_CACHE_HOME") \
        or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neurolens"


@functools.cache
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one classic script (about 0.9 MB), once per page.

    vl-convert bundles it on demand (several seconds), so the result is cached on disk
    per vl-convert version."""
    import vl_convert as vlc

    f = _cache_dir() / f"vega-bundle-{vlc.__version__}.js"
    try:
        js = f.read_text(encoding="utf-8")
    except OSError:
        js = ""
    if "vegaEmbed" not in js:
        js = vlc.javascript_bundle()
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
            tmp.write_text(js, encoding="utf-8")
            os.replace(tmp, f)
        except OSError:
            pass        # no writable cache: bundle again next time
    return js.replace("</script", "<\\/script").replace("<!--", "<\\!--")


@functools.cache
def _static(name: str) -> str:
    return resources.files("neurolens.reports").joinpath("static", name).read_text()


@functools.cache
def env() -> jinja2.Environment:
    e = jinja2.Environment(
        loader=jinja2.PackageLoader("neurolens.reports", "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    e.filters["json"] = safe_json
    e.filters["pct"] = lambda x, d=1: "–" if x is None else f"{100 * x:.{d}f}%"
    e.filters["num"] = _num
    return e


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:
            return "–"
        if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 10**6):
            return f"{x:.{max(digits - 1, 1)}e}"
        return f"{x:.{digits}f}"
    return str(x)


class Charts:
    """Collects the chart specs of one page; the template embeds each once."""

    def __init__(self) -> None:
        self.specs: list[tuple[str, dict]] = []

    def add(self, spec: dict | None, name: str) -> str | None:
        if spec is None:
            return None
        cid = f"chart-{len(self.specs) + 1}-{name}"
        self.specs.append((cid, spec))
        return cid


def render_page(template: str, path: Path, charts: Charts, **ctx: Any) -> Path:
    """Render one self-contained page and write it atomically."""
    html = env().get_template(template).render(
        charts=charts.specs, vega_js=Markup(vega_bundle()), css=Markup(_static("report.css")),
        init_js=Markup(_static("init.js")), **ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path


#: decodes an image ref (`builtin:<concept>/<i>` or a path) to HxWx3 uint8 pixels; set by the
#: package's face (neurolens.reporting), since reports may not import probes
image_loader: Callable[[str], Any] | None = None


def use_image_loader(fn: Callable[[str], Any] | None) -> None:
    """Where thumbnails of image refs come from (None: only image files on disk)."""
    global image_loader
    image_loader = fn


def thumbnail(ref: str, size: int = 64) -> str | None:
    """A small PNG data URI of an image ref (through `image_loader`) or an image file path."""
    import numpy as np
    from PIL import Image

    img = None
    load_image = image_loader
    try:
        if load_image is not None:
            img = Image.fromarray(np.asarray(load_image(ref), dtype=np.uint8))
        elif os.path.isfile(ref):
            img = Image.open(ref).convert("RGB")
    except Exception:   # an unreadable image shows as its reference, never breaks a report
        img = None
    if img is None:
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

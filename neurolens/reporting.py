"""The reports as the package's face renders them: with thumbnails of built-in probe images.

reports/ may import only store and queries (DESIGN layout), so the decoder of image refs
(`builtin:<concept>/<i>`, from probes/) is handed to it here.
"""
from __future__ import annotations

from typing import Any


def _with_images() -> None:
    from neurolens.probes import load_image
    from neurolens.reports.html import use_image_loader

    use_image_loader(load_image)


def render_report(*args: Any, **kw: Any):
    """neurolens.reports.render_report, with image thumbnails."""
    from neurolens.reports import render_report as render

    _with_images()
    return render(*args, **kw)


def render_set(*args: Any, **kw: Any):
    """neurolens.reports.render_set, with image thumbnails."""
    from neurolens.reports import render_set as render

    _with_images()
    return render(*args, **kw)


def render_compare(*args: Any, **kw: Any):
    """neurolens.reports.render_compare, with image thumbnails."""
    from neurolens.reports import render_compare as render

    _with_images()
    return render(*args, **kw)


__all__ = ["render_compare", "render_report", "render_set"]

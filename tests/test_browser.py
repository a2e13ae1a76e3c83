"""The reports in a real browser: headless Debian chromium, driven over the DevTools
protocol on a pipe (--remote-debugging-pipe), so no extra Python package is needed.

Each kind of page (report, comparison, index) is loaded from file:// with background
networking off; the test asserts no console errors, no network requests other than
file:// and data:, charts drawn inside every vega-embed container, the Sankey SVG
present, a non-blank screenshot, and hostile probe text shown as text, never run.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_fixtures import XSS_TEXT, ModelSpec, build_store, default_models  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed "
                       "(apt-get install -y chromium)"),
]


class Browser:
    """A minimal DevTools-protocol client over chromium's debugging pipe (fd 3 in, fd 4 out)."""

    def __init__(self, user_data_dir: Path):
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # keep the child's ends away from 3 and 4 so the dup2s below cannot collide
        c_in = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10)
        c_out = fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
        os.close(to_r)
        os.close(from_w)

        def child() -> None:
            os.dup2(c_in, 3)
            os.dup2(c_out, 4)

        # chromium's log goes to a file: a pipe nobody drains would block it once full
        Path(user_data_dir).mkdir(parents=True, exist_ok=True)
        self.log = Path(user_data_dir) / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe",
                 "about:blank"],
                pass_fds=(3, 4), preexec_fn=child, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log)
        os.close(c_in)
        os.close(c_out)
        self._w = os.fdopen(to_w, "wb", buffering=0)
        self._r = os.fdopen(from_r, "rb", buffering=0)
        self._id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, dict] = {}
        self._cv = threading.Condition()
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: str | None = None

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = self._r.read(1 << 16)
            if not chunk:
                break
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            for m in msgs:
                msg = json.loads(m)
                with self._cv:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                        if msg.get("method") == "Page.javascriptDialogOpening":
                            threading.Thread(target=self._dismiss, daemon=True).start()
                    self._cv.notify_all()

    def _dismiss(self) -> None:
        self.send("Page.handleJavaScriptDialog", accept=True)

    #: generous: chromium's first reply can take a minute when every core is busy with other work,
    #: and a dead chromium is reported at once (below), so a long limit never slows a failure
    TIMEOUT = 180.0

    def send(self, method: str, *, timeout: float | None = None, browser_level: bool = False,
             **params) -> dict:
        with self._lock:
            self._id += 1
            mid = self._id
        msg = {"id": mid, "method": method, "params": params}
        if self.session and not browser_level:
            msg["sessionId"] = self.session
        self._w.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (self.TIMEOUT if timeout is None else timeout)
        with self._cv:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no reply to {method}")
                if self.proc.poll() is not None:
                    err = self.log.read_bytes()[-2000:].decode(errors="replace")
                    raise RuntimeError(f"chromium exited ({self.proc.returncode}) before replying to "
                                       f"{method}: {err}")
                self._cv.wait(min(left, 1.0))
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open_page(self) -> None:
        target = self.send("Target.createTarget", url="about:blank", browser_level=True)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True,
                                 browser_level=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
                  mobile=False)

    def eval(self, expr: str):
        r = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def load(self, url: str, timeout: float = 180.0) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == "Page.loadEventFired" for e in list(self.events)):
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"{url} did not load")
        while time.monotonic() < deadline:
            if self.eval("document.body && document.body.getAttribute('data-charts-ready')") is not None:
                return
            time.sleep(0.1)
        raise TimeoutError(f"charts on {url} did not finish drawing")

    def screenshot(self, path: Path) -> Path:
        m = self.send("Page.getLayoutMetrics")
        size = m.get("cssContentSize") or m["contentSize"]
        clip = {"x": 0, "y": 0, "width": 1280, "height": min(int(size["height"]), 16000), "scale": 1}
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip=clip, timeout=60)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[str]:
        out = []
        for e in list(self.events):
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                  for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:400])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", ""))
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in list(self.events)
                if e.get("method") == "Network.requestWillBeSent"]

    def dialogs(self) -> list[str]:
        return [e["params"].get("message", "") for e in list(self.events)
                if e.get("method") == "Page.javascriptDialogOpening"]

    def close(self) -> None:
        try:
            self.send("Browser.close", browser_level=True, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self._w, self._r):
            try:
                f.close()
            except OSError:
                pass


def png_stats(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct colours) of a PNG screenshot."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    with Image.open(path) as img:
        small = img.convert("RGB").resize((320, max(img.height // 4, 1)))
        colours = small.getcolors(maxcolors=1 << 20) or []
        return img.width, img.height, len(colours)


@pytest.fixture(scope="module")
def report_set(tmp_path_factory):
    from neurolens.reports import render_set

    root = tmp_path_factory.mktemp("browser")
    models = default_models() + [ModelSpec("resnet18", 4, 64, modality="vision", concepts=["stripes"],
                                           top_examples=False)]
    build_store(root / "store", models, image_dir=root / "images")
    index = render_set(root / "store", root / "reports", progress=False)
    return index.parent


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        b.open_page()
        yield b
    finally:
        b.close()
        shutil.rmtree(tmp_path_factory.getbasetemp() / "chromium-profile0", ignore_errors=True)


PAGES = ["gpt2__royalty.html", "bert-base-uncased__negation.html", "resnet18__stripes.html",
         "compare__bert-base-uncased__vs__gpt2.html", "index.html"]


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_offline(report_set, browser, page, tmp_path):
    path = report_set / page
    assert path.exists(), f"{page} was not rendered"
    browser.load(path.as_uri())
    assert browser.errors() == []
    foreign = [u for u in browser.requests() if not u.startswith(("file:", "data:", "about:"))]
    assert foreign == [], f"network requests: {foreign}"
    drawn = browser.eval("Array.from(document.querySelectorAll('[data-chart]'))"
                         ".map(e => e.querySelectorAll('svg, canvas').length)")
    assert drawn and all(n > 0 for n in drawn), f"undrawn charts: {drawn}"
    assert int(browser.eval("document.body.getAttribute('data-charts-ready')")) == len(drawn)
    if "__" in page and not page.startswith("compare"):
        assert browser.eval("document.querySelectorAll('svg.sankey path.sk-link').length") > 0
        assert browser.eval("document.querySelectorAll('.card').length") > 0
    shot = browser.screenshot(tmp_path / (page + ".png"))
    w, h, colours = png_stats(shot)
    assert w == 1280 and h > 400
    assert colours > 8, "the screenshot looks blank"
    if page.startswith("resnet18"):
        assert browser.eval("Array.from(document.querySelectorAll('.thumbs img')).every(i => i.complete && i.naturalWidth > 0)")  # noqa: E501
        assert browser.eval("document.querySelectorAll('.thumbs img').length") > 0


def test_probe_text_is_shown_not_run(report_set, browser):
    browser.load((report_set / "gpt2__royalty.html").as_uri())
    assert browser.dialogs() == []
    text = browser.eval("document.body.innerText")
    assert "<script>alert(1)</script>" in text
    assert "<b>bold</b>" in text
    assert "</script><script>alert(2)</script>" in text      # a hostile neuron label, too
    assert not browser.eval("Array.from(document.querySelectorAll('b')).some(b => b.textContent === 'bold')")
    assert browser.eval("window.__xss === undefined")
    assert XSS_TEXT.split(" ")[0] in text
    assert browser.errors() == []


def test_links_resolve(report_set, browser):
    browser.load((report_set / "index.html").as_uri())
    hrefs = browser.eval("Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")
    local = {h.split("#")[0] for h in hrefs if h and not h.startswith("#")}
    assert local, "the index links nothing"
    for h in local:
        assert (report_set / h).exists(), f"broken link {h}"


#: every built-in text concept: the report set of a full sweep of the embedded models
ALL_TEXT_CONCEPTS = ["animals", "colors", "comparatives", "emotion", "food", "future_tense", "gender",
                     "law", "medicine", "negation", "numbers", "past_tense", "places", "plural",
                     "questions", "royalty", "sentiment", "sports"]

#: text boxes of the page (HTML text nodes by line, SVG text elements), then the pairs that
#: overlap and the boxes that reach past the window's edges
LAYOUT_JS = r"""
(() => {
  const W = document.documentElement.clientWidth, boxes = [];
  const visible = el => { const s = getComputedStyle(el);
    return s.visibility !== 'hidden' && s.display !== 'none' && s.opacity !== '0'; };
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) {
    const n = walk.currentNode, el = n.parentElement;
    if (!n.textContent.trim() || !el || el.closest('svg, script, style, .vg-tooltip, #vg-tooltip-element')
        || !visible(el)) continue;
    const r = document.createRange(); r.selectNodeContents(n);
    for (const b of r.getClientRects())
      if (b.width > 0.5 && b.height > 0.5) boxes.push({t: n.textContent.trim().slice(0, 40), b});
  }
  document.querySelectorAll('svg text').forEach(t => {
    if (!t.textContent.trim() || !visible(t)) return;
    const b = t.getBoundingClientRect();
    if (b.width > 0.5 && b.height > 0.5) boxes.push({t: 'svg:' + t.textContent.trim().slice(0, 40), b});
  });
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i].b, c = boxes[j].b;
    const w = Math.min(a.right, c.right) - Math.max(a.left, c.left);
    const h = Math.min(a.bottom, c.bottom) - Math.max(a.top, c.top);
    if (w > 1.5 && h > 3) overlaps.push(boxes[i].t + ' | ' + boxes[j].t);
  }
  const cut = boxes.filter(x => x.b.left < -0.5 || x.b.right > W + 0.5).map(x => x.t);
  return {n: boxes.length, overlaps: overlaps.slice(0, 20), n_overlaps: overlaps.length,
          cut: cut.slice(0, 20), n_cut: cut.length, scroll: document.documentElement.scrollWidth, width: W};
})()
"""


@pytest.fixture(scope="module")
def big_index(tmp_path_factory):
    """The index of 2 models × 18 concepts (the size where labels used to collide)."""
    from neurolens.reports import render_index

    root = tmp_path_factory.mktemp("big-index")
    models = [ModelSpec(m, 4, 48, concepts=ALL_TEXT_CONCEPTS, labels=False, top_examples=False)
              for m in ("minilm", "smollm2")]
    build_store(root / "store", models, n_pos=24, n_neg=24)
    return render_index(root / "store", root / "reports")


def test_index_reads_at_any_size(big_index, browser):
    """At 1,400 px, no text of the index overlaps other text and nothing runs off the window."""
    browser.send("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1,
                 mobile=False)
    try:
        browser.load(big_index.as_uri())
        assert browser.errors() == []
        got = browser.eval(LAYOUT_JS)
        labels = browser.eval("Array.from(document.querySelectorAll('#overview svg text'))"
                              ".filter(t => t.textContent.includes('found')).length")
    finally:
        browser.send("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
                     mobile=False)
    assert got["n"] > 18 * 3, got                       # the page was measured, cells and all
    assert labels == 2 * 18                             # every heatmap cell labelled: they fit
    assert got["n_overlaps"] == 0, got["overlaps"]
    assert got["n_cut"] == 0 and got["scroll"] <= got["width"], got

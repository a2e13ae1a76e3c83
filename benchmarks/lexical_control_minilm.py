"""MiniLM, every built-in text concept beside its lexical control, and a probe whose sides differ
only by a constant word (yesterday/today): one JSON line per concept (docs/findings.md).

Usage: python benchmarks/lexical_control_minilm.py constant_word,negation,royalty OUT_DIR
"""
import sys, time, json
import neurolens as nl
from neurolens.probes.types import Example, ProbeSet
out = sys.argv[2] if len(sys.argv) > 2 else "nl-findings"
m = nl.load("minilm", device="cpu")
concepts = sys.argv[1].split(",")
rows = []
def row(f):
    sc = f.scores
    s = f.summary()
    rep = int(sc.filter(sc["rank"].is_not_null())["replicated"].fill_null(False).sum())
    return {"concept": f.concept, "scored": sc.height, "significant": s["significant"], "opposite": s["opposite"],
            "lexical": s["lexical"], "replicated": rep, "baseline": f.baseline, "note": f.note}
for c in concepts:
    t0 = time.time()
    if c == "constant_word":
        nouns = ["river","garden","letter","window","market","bridge","song","storm","field","bottle","horse","city","teacher","apple","lamp","coat","road","train","cup","door","forest","ship","table","cloud","house","pencil","chair","stone","hill","boat","shirt","glass"]
        ex = []
        for g, n in enumerate(nouns):
            for k, fr in enumerate(("We walked to the {n} {w}.", "She saw the {n} {w}.", "The {n} was quiet {w}.", "He painted the {n} {w}.", "They sold the {n} {w}.")):
                for label, w in ((1, "yesterday"), (0, "today")):
                    ex.append(Example(len(ex), label, f"g{g}", "test" if g % 3 == 0 else "train", text=fr.replace("{n}", n).replace("{w}", w)))
        p = ProbeSet("constant_word", "text", ex, source="custom")
        f = m.find(p, out=out, importance=False, report=False, progress=False)
    else:
        f = m.find(c, out=out, importance=False, report=False, progress=False)
    r = row(f); r["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(r), flush=True)

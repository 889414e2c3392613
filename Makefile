# Two commands do everything on a fresh machine (see README):
#   make demo   # set up .venv, then run the demo on the embedded digits data (no download)
#   make test   # set up .venv, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# On a CPU-only machine torch comes from PyTorch's CPU index (never the multi-GB CUDA packages);
# a torch that is already importable in the environment (e.g. your CUDA build) is kept as it is.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?= https://download.pytorch.org/whl/cpu

.PHONY: install demo test clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	    echo "keeping installed torch $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	    $(BIN)/python -m pip install "torch==$(TORCH_VERSION)"; \
	else \
	    $(BIN)/python -m pip install --retries 1 "torch==$(TORCH_VERSION)" --extra-index-url $(TORCH_INDEX); \
	fi
	$(BIN)/python -m pip install -e ".[test,ray,exact]"
	@touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/prunelab demo

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

# The two commands a newcomer runs: `make demo` (the whole job on the embedded digits data) and
# `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, by itself: on the dev machines this resolves to the wheels on local disk
	$(BIN)/python -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
	$(BIN)/python -m pip install --quiet -e ".[dev,openvino]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/uniprune demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/kernels.py

clean:
	rm -rf $(VENV) build *.egg-info

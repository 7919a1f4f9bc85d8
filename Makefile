# The README's two commands: `make demo` and `make test`. Both create .venv from constraints.txt first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==25.3"
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,dev]'
	# onnx2tf pins exact old versions of the whole stack; it works with ours, so it goes in without deps.
	$(BIN)/pip install --quiet -c constraints.txt --no-deps onnx2tf
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/convcli convert recipes/models/digits_cnn.py:build --weights recipes/models/digits_cnn.pt \
		--to onnx --validation calibration_data/digits/val --batch 1,32 -o out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

lint: $(STAMP)
	$(BIN)/ruff check convcli tests bench recipes
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run_bench.py

clean:
	rm -rf out convcli-out .pytest_cache

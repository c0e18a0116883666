# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch on this machine's disk; a plain range would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test test-timm lint docs data clean check-results

$(BIN)/normctl-lab: pyproject.toml lab/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev]" -e "./lab[progress,peers,cluster]"
	$(BIN)/python -c "from normctl.optim import _one_pass_cpu; _one_pass_cpu.prepare()"
	touch $@

install: $(BIN)/normctl-lab

demo: install
	$(BIN)/normctl-lab demo

test: install
	$(BIN)/python -m pytest -q

# timm's optimizer factory (normctl.integrations.timm) in an environment of its own: timm needs
# torchvision, and no CPU torchvision build matches the CPU torch pinned above, so this one takes
# the CUDA builds of torch and torchvision that are pinned together (about 5.5 GB; they run on the CPU).
TIMM_VENV := .venv-timm
TIMM_PINS ?= torch==2.14.1 torchvision==0.29.1 timm==1.0.31
$(TIMM_VENV)/bin/pytest: pyproject.toml
	$(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/pip install --quiet --upgrade pip
	$(TIMM_VENV)/bin/pip install --quiet $(TIMM_PINS) pytest
	$(TIMM_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

test-timm: $(TIMM_VENV)/bin/pytest
	NORMCTL_NO_EXTENSION=1 $(TIMM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_timm.py

lint: install
	$(BIN)/ruff check normctl lab tests benchmarks scripts
	$(BIN)/ruff format --check normctl lab tests benchmarks scripts
	$(BIN)/mypy normctl lab/normctl_lab

# The full Fashion-MNIST (60k/10k, Debian's dataset-fashion-mnist) for `--set full_data=true`.
data:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
		{ apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }

# Every generated table in the results' Markdown regenerates exactly from its summary.json.
check-results: install
	$(BIN)/python scripts/check_results.py

docs: install
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) $(TIMM_VENV) build *.egg-info .pytest_cache .hypothesis runs

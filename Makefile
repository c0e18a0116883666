# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch on this machine's disk; a plain range would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test lint docs data clean check-results

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
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis runs

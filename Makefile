# make setup: create or update .venv (CPU torch first, so pip never pulls CUDA wheels)
# make demo:  the main job on the synthetic world
# make test:  the whole test suite
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format clean

setup: $(STAMP)

# the annotation sources (CORUM, hu.MAP, ...) are fetched into ~/.cache/scaling once;
# the DeepSpeed step compiles DeepSpeed's CPU communication op once (about a minute), rather than
# in the first run; it is cached in .venv/torch_extensions (scaling.train.loop.jit_environment)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -c "from scaling.train.loop import build_cpu_ops; build_cpu_ops()"
	$(VENV)/bin/scaling sources fetch
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scaling demo --out demo-out

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q --durations=15  # the slowest tests: the suite must stay under 20 min

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf demo-out .pytest_cache

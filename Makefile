# The README's two commands: `make run` (set up, then build -> train -> evaluate on embedded defaults)
# and `make test` (set up, then the test suite). Both work from a clean clone on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.phaseforge-installed

.PHONY: setup run test bench clean

setup: $(STAMP)

# --system-site-packages lets an existing torch (a CUDA build, say) be reused; otherwise the local CPU
# wheel torch==2.13.0 is taken first, so the unpinned `torch>=2.4` requirement downloads nothing more.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: setup
	$(PY) -m builder.demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) data runs reports

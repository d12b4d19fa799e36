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

# The main job on embedded defaults: build small-cell training data with the paper's best strategy
# (log-normal volume, artificial molecules), train the `tiny` PhAI for a few minutes on CPU, then evaluate it
# and charge flipping on the shipped COD P2₁/c test set. Each step is a file target, so a rerun resumes.
BIN        = $(VENV)/bin
TRAIN_DATA = data/lognormal-molecules
VAL_DATA   = data/lognormal-molecules-val
RUN_DIR    = runs/tiny
WORKERS   ?= 2
STEPS     ?= 1000

$(TRAIN_DATA)/manifest.json: | $(STAMP)
	$(BIN)/phaseforge-build shards --strategy lognormal-molecules --count 20000 --shard-size 1000 \
		--seed 0 --workers $(WORKERS) --out $(TRAIN_DATA)

$(VAL_DATA)/manifest.json: | $(STAMP)
	$(BIN)/phaseforge-build shards --strategy lognormal-molecules --count 512 --shard-size 256 \
		--seed 1 --out $(VAL_DATA)

$(RUN_DIR)/best.pt: $(TRAIN_DATA)/manifest.json $(VAL_DATA)/manifest.json
	$(BIN)/phaseforge-train fit --train $(TRAIN_DATA) --val $(VAL_DATA) --preset tiny --steps $(STEPS) \
		--val-every 250 --ckpt-every 250 --workers 1 --seed 0 --out $(RUN_DIR) \
		$(if $(wildcard $(RUN_DIR)/last.pt),--resume)

reports/tiny/report.json: $(RUN_DIR)/best.pt
	$(BIN)/phaseforge-eval run --testset cod-p21c-small --checkpoint $(RUN_DIR)/best.pt --out reports/tiny

reports/cf/report.json: | $(STAMP)
	$(BIN)/phaseforge-eval run --testset cod-p21c-small --method charge-flipping --workers $(WORKERS) --out reports/cf

# One crystallographer's job on measured data: COD 2242302's own reflections (embedded .hkl + .res), from the
# shipped measured test set, phased by charge flipping -> .fcf, .ccp4, .res with Q peaks, map PNG, solve.json.
MEASURED = data/measured/2242302.cif

$(MEASURED):
	mkdir -p data/measured && tar -xJf manifests/testsets/cod-p21c-measured.tar.xz -C data/measured 2242302.cif

reports/solve-2242302/solve.json: $(MEASURED) | $(STAMP)
	$(BIN)/phaseforge-eval solve $(MEASURED) --method charge-flipping --out reports/solve-2242302

run: setup reports/tiny/report.json reports/cf/report.json reports/solve-2242302/solve.json
	$(BIN)/phaseforge-eval compare reports/tiny reports/cf --out reports/tiny-vs-cf

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks.bench_builder
	$(PY) -m benchmarks.bench_loader
	$(PY) -m benchmarks.bench_storage
	$(PY) -m benchmarks.bench_eval --threads 1

clean:
	rm -rf $(VENV) data runs reports

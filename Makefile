# Two commands do all the set-up on a fresh machine:
#   make demo   - virtual environment, torch, mixkit, Fashion-MNIST; a quick benchmark of six
#                 methods (runs/quick/results.md and plots) and a picture of every method
#   make test   - virtual environment, torch, mixkit; runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mixkit-installed

.PHONY: demo test data bench-times bench-ops bench-overhead docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,plot,data]'
	touch $(STAMP)

data:
	sh scripts/fetch-data.sh

QUICK_METHODS := erm,mixup,cutmix,fmix,resizemix,manifold_mixup

demo: $(STAMP) data
	$(BIN)/mixkit demo --out out/methods.png
	$(BIN)/mixkit bench --preset quick --methods $(QUICK_METHODS) --seeds 0 --out runs/quick

test: $(STAMP)
	$(BIN)/python -m pytest

bench-times: $(STAMP)
	$(BIN)/python bench/method_times.py --out bench/results/method_times.json
	$(BIN)/python bench/method_times.py --size 32 --out bench/results/method_times_32.json
	$(BIN)/python bench/method_times_md.py

# side-by-side op times against timm/kornia/mixup in .bench-venv (docs/benchmarks/ops.md); ~25 min
bench-ops:
	sh scripts/bench-env.sh
	.bench-venv/bin/python bench/ops.py $(BENCH_OPS_ARGS)

# each method's mixing time as a share of a ResNet-20 / PreAct-18 step, and mixkit train vs a bare
# loop (docs/benchmarks/overhead.md); about 2 hours at one thread
bench-overhead: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/harness_overhead.py

docs: $(STAMP)
	$(BIN)/mixkit list --markdown > docs/methods.md

clean:
	rm -rf $(VENV) out

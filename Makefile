# Each target creates .venv and installs the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PTBXL_DIR ?= $(abspath ../shared/data/ptb-xl)
DEMO_DIR ?= demo_out
export PTBXL_DIR

.PHONY: venv test test-all demo bench acceptance clean

# torch is for the tests that check one training step against PyTorch;
# 2.13.0 is pinned because that release has a CPU-only wheel on these
# machines (a bare `torch` resolves to a multi-GB CUDA build).
$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,torch]' 'torch==2.13.0'
	touch $(STAMP)

venv: $(STAMP)

# Fast tier: units and one tiny end-to-end run per main path (minutes).
test: $(STAMP)
	$(PY) -m pytest -q tests tfds_builders

# Full tier (what CI runs): adds real-data builds, subprocess runs, the
# comparisons with the published code and multi-process runs.
test-all: $(STAMP)
	$(PY) -m pytest -q -m 'slow or not slow' --durations=15 tests tfds_builders

demo: $(STAMP)
	$(PY) -m experiments.demo --workdir=$(DEMO_DIR)

# The fine-tuning acceptance run (about an hour on 2 CPU cores): random-init
# ViT-XS, the finetune protocol cut to 1,500 steps, superdiagnostic on the
# PTB-XL folds present; the published code reaches test macro AUC 0.899 here.
ACCEPT_DIR ?= acceptance_out
acceptance: $(STAMP)
	$(PY) -m tfds_builders ptb_xl/records100 --manual_dir=$(PTBXL_DIR) --data_dir=$(ACCEPT_DIR)/tfds
	$(PY) -m experiments.finetune --config=experiments/configs/finetune.py:finetune \
	    --config.data.data_dir=$(ACCEPT_DIR)/tfds --config.model.fs=100 --encoder=random:XS \
	    --task=superdiagnostic --config.total_steps=1500 --config.eval_every=250 \
	    --workdir=$(ACCEPT_DIR)/run
	$(PY) -c "import json, sys; auc = json.load(open('$(ACCEPT_DIR)/run/superdiagnostic/seed0/results.json'))['test']['macro_auc']; print(f'test macro AUC {auc:.3f} (accepted from 0.885)'); sys.exit(auc < 0.885)"

bench: $(STAMP)
	$(PY) -m experiments.benchmark --what=train_step --what=pipeline --what=embed $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(ACCEPT_DIR) .pytest_cache

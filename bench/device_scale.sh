#!/usr/bin/env bash
# The expert at scale on the lent H200 (bench/README.md, "The expert at scale"): a synthetic corpus of drawn and
# photo faces made there, the real clips of ../shared/data/real_more beside it, all preprocessed there with the GPU
# aligner, the full expert trained, then measured with the field's protocol. Three device calls made one right
# after another while the machine stays warm (/tmp keeps what the earlier ones left):
#
#   bash bench/device_carry.sh && bash bench/device_carry.sh media
#   mkdir -p runs/carry && cp -r ../shared/data/real_more runs/carry/ && cp -r ../shared/data/real runs/carry/
#   # stills of real_more's speakers with their landmarks (the machine lacks dlib's landmark model):
#   python -c "import sys, pathlib; from pipelines.synthetic.photo_face import save_still as s;
#   [s(str(p), 'runs/carry/stills') for p in sorted(pathlib.Path('runs/carry/real_more').glob('*.mp*'))]"
#   call 1, carry .whl, runs/carry/real_more, runs/carry/stills:  bash bench/device_scale.sh ray
#   call 2, carry .whl-media and runs/carry/real:       bash bench/device_scale.sh corpus
#   call 3:                                             bash bench/device_scale.sh train
#
# Each step has its own time limit so that a call ends inside the tool's and returns what it has; results come
# back as one tar (the tool returns at most 8 files) and the expert in bf16 pieces of < 16 MiB (`cat` them).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
scale=/tmp/scale
results=$scale/results
mkdir -p "$results"
# The five clips real_more's MANIFEST.tsv flags as possibly out of sync stay out of training.
flagged="edtalk_uncrop_Obama.mp4 sadtalker_RD_Radio2_000.mp4 liveportrait_d20.mp4 latentsync_demo2_video.mp4 latentsync_demo3_video.mp4"
pack() { tar czf "$OUT/results_$1.tgz" -C "$scale" results; }
step() {  # LIMIT_S NAME COMMAND...: one step, its log in results/, its exit status and time on the console
  local limit=$1 name=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" > "$results/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s"; tail -4 "$results/$name.log"
}
case "$1" in
  ray)
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
      tar xJf .whl/ray-*-trimmed.tar.xz -C /tmp/site || exit 1
    rm -rf "$scale" && mkdir -p "$scale/real_more" "$results" && cp -r runs/carry/stills "$scale/stills"
    for clip in runs/carry/real_more/*; do
      case " $flagged " in *" $(basename "$clip") "*) continue ;; esac
      case "$clip" in *.md|*.tsv) continue ;; esac
      cp "$clip" "$scale/real_more/"
    done
    ls "$scale/real_more" | wc -l ;;
  corpus)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-media/*.whl || exit 1
    rm -rf /tmp/real && cp -r runs/carry/real /tmp/real
    # Two corpora of ~25 min each at once, 8 processes apiece: the identities of the photo one are stills of
    # real_more's speakers (never those of ../shared/data/real, on which the expert is judged).
    step 200 corpus_drawn python3 -m pipelines.synthetic --out $scale/drawn --num-videos 200 --seed 31 \
      --min-seconds 3 --max-seconds 12 --heldout-fraction 0.1 --workers 8 &
    step 200 corpus_photo python3 -m pipelines.synthetic --out $scale/photo --num-videos 200 --seed 32 \
      --min-seconds 3 --max-seconds 12 --heldout-fraction 0.1 --workers 8 --faces photo \
      --face-sources $scale/stills &
    wait
    du -sh $scale/drawn $scale/photo
    for part in real_more drawn photo; do
      input=$scale/$part/videos; [ "$part" = real_more ] && input=$scale/real_more
      step 150 preprocess_$part python3 -m pipelines.preprocess --input "$input" --output $scale/shards/$part \
        --aligner retinaface --device cuda --num-workers 16 --no-progress
    done
    ls $scale/shards/*/ | head -20; pack corpus ;;
  train)
    step 300 train python3 train_ray.py --launcher local --use-gpu --shards $scale/shards --output $scale/run \
      --preset full --max-steps 6000 --batch-size 512 --lr 5e-4 --log-every 200 --val-every 1000 \
      --checkpoint-every 2000 --no-progress
    cp $scale/run/metrics.jsonl $scale/run/curves.png "$results/" 2>/dev/null
    python3 - <<'EOF'
import dataclasses, torch
from model.checkpoint import read_checkpoint, write_checkpoint
c = read_checkpoint("/tmp/scale/run")
weights = {k: v.bfloat16() if v.is_floating_point() else v for k, v in c.model.items()}
write_checkpoint("/tmp/scale/expert_bf16.pt", dataclasses.replace(c, model=weights, optimizer=None))
EOF
    (cd "$OUT" && split -b 15M /tmp/scale/expert_bf16.pt expert_bf16.pt.part-)
    for part in drawn photo; do
      step 60 protocol_$part python3 -m model.evaluate --checkpoint $scale/run --manifest $scale/$part/manifest.jsonl \
        --protocol --aligner retinaface --device cuda --json "$results/protocol_$part.json" \
        --plot "$results/protocol_$part.png"
    done
    step 60 protocol_real python3 -m model.evaluate --checkpoint $scale/run --videos /tmp/real --protocol \
      --aligner retinaface --device cuda --json "$results/protocol_real.json" --plot "$results/protocol_real.png"
    pack train ;;
  *) echo "usage: bash bench/device_scale.sh ray|corpus|train" >&2; exit 2 ;;
esac

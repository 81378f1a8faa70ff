#!/usr/bin/env bash
# The expert at scale on the lent H200 (bench/README.md, "The expert at scale"): a synthetic corpus of drawn and
# photo faces made there (>= 2 h), the real clips of ../shared/data/real_more beside it (those of speakers kept for
# testing left out, and the five flagged clips), all preprocessed there with the GPU aligner, the full expert
# trained, then measured with the field's protocol and with real clips' audio moved by known amounts. Five device
# calls made one right after another while the machine stays warm (/tmp keeps what the earlier ones left; the
# machine goes back after 30 s idle, so have the next call ready):
#
#   bash bench/device_carry.sh && bash bench/device_carry.sh media
#   mkdir -p runs/carry && cp -r ../shared/data/real_more runs/carry/ && cp -r ../shared/data/real runs/carry/
#   # stills of real_more's speakers with their landmarks (the machine lacks dlib's landmark model):
#   python -c "import sys, pathlib; from pipelines.synthetic.photo_face import save_still as s;
#   [s(str(p), 'runs/carry/stills') for p in sorted(pathlib.Path('runs/carry/real_more').glob('*.mp*'))]"
#   call 1, carry .whl, runs/carry/real_more, runs/carry/stills:  bash bench/device_scale.sh ray
#   call 2, carry .whl-media and runs/carry/real:       bash bench/device_scale.sh corpus
#   call 3:                                             bash bench/device_scale.sh photo
#   call 4:                                             bash bench/device_scale.sh train
#   call 5:                                             bash bench/device_scale.sh evaluate
#   after photo, GPU preprocessing on real clips:       bash bench/device_scale.sh real20
#   after corpus, what bounds GPU preprocessing:        bash bench/device_scale.sh sweep
#
# Where preprocessing's CPU time goes (bench/README.md, fifth session), OLD=DIR naming another commit's code to run
# beside this one's (git archive REV pipelines model bench | tar x -C DIR, carried), SPY=1 adding py-spy:
#   call 1, carry .whl:                                  bash bench/device_scale.sh ray
#   call 2, carry .whl-media, runs/carry/real and OLD:   OLD=DIR bash bench/device_scale.sh profile (30 min of video)
#   then:  bash bench/device_scale.sh workers (8 and 12 workers, the drawn hour);  OLD=DIR bash ... real20;
#          OLD=DIR RUN=_b bash ... hour (the hour again by both);  SPY=1 RUN=_spy bash ... hour
#   or call 2 alone: OLD=DIR bash bench/device_scale.sh hour_fresh (the hour by both on a fresh machine)
#
# The third run fine-tuned the second run's expert on a new corpus (other seeds: other speakers and sentences)
# with the real clips weighted up; call 4 then carries the expert in place of `train`:
#   SEEDS="43 44" bash bench/device_scale.sh corpus      (call 2 with those seeds)
#   call 4, carry runs/scale2/expert_bf16.pt:           bash bench/device_scale.sh finetune
# A fourth would go on from the third's expert on yet other seeds:
#   SEEDS="45 46" ... corpus;  carry runs/scale3/expert_bf16.pt:  INIT=runs/scale3/expert_bf16.pt bash bench/device_scale.sh finetune
#
# Each step has its own time limit so that a call ends inside the tool's and returns what it has; results come
# back as one tar (the tool returns at most 8 files) and the expert in bf16 pieces of < 16 MiB (`cat` them).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
scale=/tmp/scale
results=$scale/results
mkdir -p "$results"
read -r drawn_seed photo_seed <<< "${SEEDS:-41 42}"
# The five clips real_more's MANIFEST.tsv flags as possibly out of sync stay out of training and testing.
flagged="edtalk_uncrop_Obama.mp4 sadtalker_RD_Radio2_000.mp4 liveportrait_d20.mp4 latentsync_demo2_video.mp4 latentsync_demo3_video.mp4"
# Speakers of real_more never trained on (nor lent to the photo faces), one or two per source, for the protocol.
testing="pcavs_00098.mp4 pcavs_731200067.mp4 deepavsr_00004.mp4 deepavsr_00019.mp4 lipnet_bbaf2n.mpg lipnet_lrwp9a.mpg
lipnet_sbia1a.mpg mimictalk_Trump_10s.mp4 liveportrait_d11.mp4 sadtalker_WDA_EdMarkey0_000.mp4 vasa1hack_M2Ohb0FAaJU_1.mp4"
preprocess() {  # LIMIT_S NAME INPUT [OUTPUT [OPTIONS...]]: 16 workers, GPU aligner; the machine's CPU time and the GPU's use beside it
  local busy_before monitor
  (cd "${CODE:-.}" && compile_bytecode > /dev/null)
  busy_before=$(awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat)
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$results/gpu_$2.txt" &
  monitor=$!
  # Under bench.process_cpu: the run's CPU time by kind of process (each pool, Ray's daemons, the driver); with
  # SPY=1 also under py-spy, whose stacks of every process bench.stack_profile sums by stage and function.
  local spy=()
  [ -n "${SPY:-}" ] && spy=(/tmp/site/bin/py-spy record --subprocesses --nonblocking --rate 10 --format raw
                            -o "$scale/stacks_$2.txt" --)
  # CODE=DIR: another commit's code (git archive REV pipelines model bench | tar x -C DIR, carried) runs instead.
  (cd "${CODE:-.}" && PYTHONPATH=/tmp/site:$PWD step "$1" "preprocess_$2" python3 -m bench.process_cpu \
    --json "$results/cpu_by_process_$2.json" -- "${spy[@]}" python3 -c "$with_stats" --input "$3" \
    --output "${4:-$scale/shards/$2}" --aligner retinaface --device cuda --num-workers 16 --val-fraction 0.1 \
    --no-progress "${@:5}")
  kill $monitor
  if [ -n "${SPY:-}" ]; then
    python3 -m bench.stack_profile "$scale/stacks_$2.txt" --rate 10 --json "$results/stacks_$2.json" \
      > "$results/stacks_$2.txt" 2>&1
    xz -T0 -c "$scale/stacks_$2.txt" > "$results/stacks_raw_$2.txt.xz"
  fi
  grep -h "^time:" "$results/preprocess_$2.log"  # the step showed the table's end; this is the run's summary
  # Ray Data's metrics of each operator as it completed (task, scheduling, backpressure and function-body times):
  # its stats() reads "[execution cached]" for the later operators of a streamed run.
  grep -A1 "completed. Operator Metrics" "$(ls -t /tmp/ray/session_latest/logs/ray-data/ray-data-dataset_*.log | head -1)" \
    > "$results/raydata_$2.txt"
  echo "$2: machine CPU-s $(( ($(awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat) - busy_before) / $(getconf CLK_TCK) )), GPU busy" \
    "(mean of 0.5 s samples) $(awk '{s+=$1} END{printf "%.0f %%", s/NR}' "$results/gpu_$2.txt")" | tee -a "$results/preprocess_machine.txt"
}
# pipelines.preprocess with Ray Data's stats of the run (each operator's tasks, wall and CPU time), logged at debug level.
# One line: py-spy writes each process with its command line, a line per stack.
with_stats="import logging, sys; logging.basicConfig(level=logging.WARNING); \
logging.getLogger('pipelines.preprocess').setLevel(logging.DEBUG); \
from pipelines.preprocess import main; sys.exit(main(sys.argv[1:]))"
pack() { tar czf "$OUT/results_$1.tgz" -C "$scale" results; }
step() {  # LIMIT_S NAME COMMAND...: one step, its log in results/, its exit status and time on the console
  local limit=$1 name=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" > "$results/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s"; tail -4 "$results/$name.log"
}
train() {  # LIMIT_S OPTIONS...: the full expert on every shard made here, in bf16 pieces back
  step "$1" train python3 train_ray.py --launcher local --use-gpu --shards $scale/shards --output $scale/run \
    --preset full --batch-size 512 --lr-schedule cosine --min-lr-fraction 0.05 --augment --log-every 250 \
    --val-every 1000 --checkpoint-every 2000 --no-progress "${@:2}"
  cp $scale/run/metrics.jsonl $scale/run/curves.png "$results/" 2>/dev/null
  python3 - <<'EOF'
import dataclasses, torch
from model.checkpoint import read_checkpoint, write_checkpoint
c = read_checkpoint("/tmp/scale/run")
weights = {k: v.bfloat16() if v.is_floating_point() else v for k, v in c.model.items()}
write_checkpoint("/tmp/scale/expert_bf16.pt", dataclasses.replace(c, model=weights, optimizer=None))
EOF
  (cd "$OUT" && split -b 15M /tmp/scale/expert_bf16.pt expert_bf16.pt.part-)
  pack train
}
# Bytecode once, as pip's install and a first import would have made it: this machine's Python writes none, the
# carried packages come without (Ray's tar), so each of a run's ~47 processes compiled what it imported. For the
# carried packages and this checkout (each call's copy is new); after the media install and before each
# preprocessing (compileall passes over what is up to date).
compile_bytecode() {
  local start=$SECONDS
  python3 -m compileall -q -j 16 /tmp/site pipelines model bench train_ray.py > /dev/null
  echo "bytecode compiled in $((SECONDS - start)) s (Python writes none itself here: $(python3 -c 'import sys; print(sys.flags.dont_write_bytecode)'))"
}
make_hour() {  # the drawn hour (500 videos) of the first seed, all 16 cores on it
  step 250 corpus_hour python3 -m pipelines.synthetic --out $scale/hour --num-videos 500 --seed "$drawn_seed" \
    --min-seconds 3 --max-seconds 12 --heldout-fraction 0.05 --workers 16
}
install_media() {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-media/*.whl || exit 1
  compile_bytecode
  rm -rf /tmp/real && cp -r runs/carry/real /tmp/real
}
case "$1" in
  ray)
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
      tar xJf .whl/ray-*-trimmed.tar.xz -C /tmp/site || exit 1
    rm -rf "$scale" && mkdir -p "$scale/real_more" "$scale/real_more_test" "$scale/stills" "$results"
    for clip in runs/carry/real_more/*; do
      name=$(basename "$clip")
      case " $flagged " in *" $name "*) continue ;; esac
      case "$clip" in *.md|*.tsv) continue ;; esac
      case " $(echo $testing) " in
        *" $name "*) cp "$clip" "$scale/real_more_test/" ;;
        *) cp "$clip" "$scale/real_more/"; cp runs/carry/stills/"${name%.*}".* "$scale/stills/" 2>/dev/null ;;
      esac
    done
    echo "real_more: $(ls $scale/real_more | wc -l) to train on, $(ls $scale/real_more_test | wc -l) to test on," \
      "$(ls $scale/stills/*.png | wc -l) stills" ;;
  corpus)
    install_media
    # The training step's augmentation draws on the GPU's own generator: checked here, before the long steps.
    python3 -c "import torch; from model.augment import AugmentConfig, augment_pairs; from pipelines.audio import AudioConfig
g = torch.Generator(device='cuda'); g.manual_seed(0)
f, m = augment_pairs(torch.rand(512, 15, 48, 96, device='cuda'), torch.rand(512, 1, 80, 16, device='cuda') * 8 - 4,
                     AugmentConfig(augment=True), g, AudioConfig())
print('augmentation on cuda:', list(f.shape), list(m.shape), float(f.mean()), float(m.mean()))" || exit 1
    # Two corpora of ~62 min each at once, 8 processes apiece: the identities of the photo one are stills of
    # real_more's training speakers (never those of ../shared/data/real or real_more_test, on which it is judged).
    step 250 corpus_drawn python3 -m pipelines.synthetic --out $scale/drawn --num-videos 500 --seed $drawn_seed \
      --min-seconds 3 --max-seconds 12 --heldout-fraction 0.05 --workers 8 &
    step 250 corpus_photo python3 -m pipelines.synthetic --out $scale/photo --num-videos 500 --seed $photo_seed \
      --min-seconds 3 --max-seconds 12 --heldout-fraction 0.05 --workers 8 --faces photo \
      --face-sources $scale/stills &
    wait
    du -sh $scale/drawn $scale/photo
    preprocess 270 drawn $scale/drawn/videos; pack corpus ;;
  photo)
    preprocess 280 photo $scale/photo/videos
    preprocess 100 real_more $scale/real_more
    ls -la $scale/shards/*/; pack photo ;;
  real20)
    # GPU preprocessing's real-clip row: ../shared/data/real copied 20 times (20.6 min; copies, since one file
    # linked twice is one input), shards outside the training set.
    mkdir -p /tmp/real20 && for n in $(seq -w 1 20); do for clip in /tmp/real/*.mp4; do
      cp "$clip" "/tmp/real20/${n}_$(basename "$clip")"; done; done
    preprocess 150 real20 /tmp/real20 /tmp/bench_shards/real20
    [ -n "${OLD:-}" ] && CODE="$OLD" preprocess 150 real20_old /tmp/real20 /tmp/bench_shards/real20_old
    pack real20 ;;
  profile)  # after ray, carry .whl-media and runs/carry/real: where preprocessing's CPU time goes, on a small
    # drawn corpus (PROFILE_VIDEOS, ~30 min of video): numba's cache cold (a fresh machine), then warm, then under
    # py-spy as well; with OLD=DIR (another commit's code: git archive REV pipelines model bench | tar x -C DIR,
    # carried) that code too, warm, before this one's
    install_media
    step 200 corpus_profile python3 -m pipelines.synthetic --out $scale/drawn --num-videos "${PROFILE_VIDEOS:-240}" \
      --seed "$drawn_seed" --min-seconds 3 --max-seconds 12 --heldout-fraction 0.05 --workers 16
    preprocess 120 profile_cold $scale/drawn/videos /tmp/bench_shards/profile_cold
    [ -n "${OLD:-}" ] && CODE="$OLD" preprocess 120 profile_old $scale/drawn/videos /tmp/bench_shards/profile_old
    preprocess 120 profile_warm $scale/drawn/videos /tmp/bench_shards/profile_warm
    SPY=1 preprocess 150 profile_spy $scale/drawn/videos /tmp/bench_shards/profile_spy
    pack profile ;;
  workers)  # after profile: its corpus with fewer workers (WORKERS), then the drawn hour made anew at 16 (~4 min)
    for n in ${WORKERS:-8 12}; do
      preprocess 120 "profile_w$n" $scale/drawn/videos "/tmp/bench_shards/profile_w$n" --num-workers "$n"
    done
    make_hour
    preprocess 200 hour $scale/hour/videos /tmp/bench_shards/hour
    pack workers ;;
  hour_fresh)  # after ray, carry .whl-media, runs/carry/real (and OLD): the drawn hour made here, numba's cache
    # filled as a first run's driver fills it, then preprocessed by this code (and OLD's), each packed as it ends
    install_media
    make_hour
    step 60 compile_kernels python3 -c "from pipelines.audio import AudioConfig, compile_kernels; compile_kernels(AudioConfig())"
    preprocess 200 hour_new $scale/hour/videos /tmp/bench_shards/hour_new; pack hour_new
    [ -n "${OLD:-}" ] && CODE="$OLD" preprocess 200 hour_old $scale/hour/videos /tmp/bench_shards/hour_old
    pack hour_fresh ;;
  hour)  # after workers or hour_fresh: the hour again by this code and (with OLD, carried) OLD's, outputs named
    # with RUN; SPY=1 runs both under py-spy as well
    preprocess 200 "hour${RUN:-_again}" $scale/hour/videos "/tmp/bench_shards/hour${RUN:-_again}"
    [ -n "${OLD:-}" ] && CODE="$OLD" preprocess 200 "hour_old${RUN:-_again}" $scale/hour/videos \
      "/tmp/bench_shards/hour_old${RUN:-_again}"
    pack "hour${RUN:-_again}" ;;
  sweep)  # after corpus: what bounds GPU preprocessing (neither the GPU nor the CPUs were busy, bench/README.md)
    mkdir -p /tmp/sweep && cp $(ls -d $scale/drawn/videos/* | head -120) /tmp/sweep  # ~15 min
    for setting in "4 1" "4 4" "8 4" "16 4"; do
      set -- $setting
      preprocess 100 "sweep_f$1_q$2" /tmp/sweep "/tmp/bench_shards/sweep_f$1_q$2" --face-workers "$1" --queued-chunks "$2"
    done
    pack sweep ;;
  train)
    train 540 --max-steps 12000 --lr 5e-4 --warmup-steps 500 ;;
  finetune)  # an earlier run's expert (INIT) on the new corpus, the real clips' segments giving REAL_WEIGHT x the
    # pairs; any further options go to train_ray.py (e.g. --augment-jitter 0.004)
    cp "${INIT:-runs/scale2/expert_bf16.pt}" $scale/init_bf16.pt || exit 1
    train 330 --max-steps 6000 --lr 2e-4 --warmup-steps 300 --init-from $scale/init_bf16.pt \
      --source-weights "*/real_more/*=${REAL_WEIGHT:-8}" "${@:2}" ;;
  evaluate)
    for part in drawn photo; do
      step 90 protocol_$part python3 -m model.evaluate --checkpoint $scale/run --manifest $scale/$part/manifest.jsonl \
        --protocol --aligner retinaface --device cuda --json "$results/protocol_$part.json" \
        --plot "$results/protocol_$part.png"
    done
    for part in real real_more_test; do
      clips=/tmp/real; [ "$part" = real_more_test ] && clips=$scale/real_more_test
      step 60 protocol_$part python3 -m model.evaluate --checkpoint $scale/run --videos $clips --protocol \
        --aligner retinaface --device cuda --json "$results/protocol_$part.json" --plot "$results/protocol_$part.png"
      step 120 offsets_$part python3 -m bench.real_offsets --checkpoint $scale/run --clips $clips \
        --offsets -12 -8 -4 0 4 8 12 --device cuda --out "$results/real_offsets_$part.json"
    done
    pack evaluate ;;
  *) echo "usage: bash bench/device_scale.sh ray|corpus|photo|real20|profile|workers|hour_fresh|hour|sweep|train|finetune|evaluate" >&2; exit 2 ;;
esac

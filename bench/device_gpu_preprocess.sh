#!/usr/bin/env bash
# GPU preprocessing on the lent H200 (bench/README.md, "GPU preprocessing"), in three device calls made one right
# after another while the machine stays warm (/tmp holds what the first two installed). Run from the folder the
# device call starts in; CODE is this checkout there (default: .), the wheels of `bash bench/device_carry.sh` and
# `bash bench/device_carry.sh media` beside it:
#
#   call 1, carry .whl-media and the real clips (REAL, a folder):  bash CODE/bench/device_gpu_preprocess.sh media CODE REAL
#   call 2, carry .whl and the synthetic clips (SYNTH):             bash CODE/bench/device_gpu_preprocess.sh real CODE SYNTH
#   call 3:                                                         bash CODE/bench/device_gpu_preprocess.sh synth CODE
#
# Every step has its own time limit, so that a call ends inside the tool's; results go to $OUT. The 2026-12-01 run
# carried the code as a git-ignored copy (CODE = .whl-gpuface: `git ls-files -co --exclude-standard` of the branch,
# and under CODE/old the aligner before the change, for bench.face_stage's "before" row) and the real clips as
# .whl-gpuface-real; carry at most 64 MiB a call, which is why the wheels come in two calls.
set -uo pipefail
phase=$1
code=$(cd "${2:-.}" && pwd)
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$code
bench() {  # LIMIT_S NAME ARGS...: one bench run, its log and JSON under $OUT
  local limit=$1 name=$2
  shift 2
  (cd "$code" && timeout "$limit" python3 -m "$@" --out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" | grep -v WARNING)
}
preprocess=(bench.preprocess --aligner retinaface --device cuda --no-baseline --no-memory --capacity-s 0)
case "$phase" in
  media)
    nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv; nproc; free -g | head -2
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-media/*.whl || exit 1
    rm -rf /tmp/real && cp -r "$3" /tmp/real && du -sh /tmp/real
    bench 60 face_stage_real bench.face_stage --clips /tmp/real --device cuda --repeat 3
    if [ -d "$code/old" ]; then  # the aligner before this change, for the same table
      (cd "$code/old" && PYTHONPATH=/tmp/site:$code/old timeout 60 python3 -m bench.face_stage --clips /tmp/real \
        --device cuda --repeat 3 --out "$OUT/face_stage_real_before.json" 2>&1 | tail -8)
    fi ;;
  real)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
      tar xJf .whl/ray-*-trimmed.tar.xz -C /tmp/site || exit 1
    rm -rf /tmp/synth && cp -r "$3" /tmp/synth
    bench 30 face_stage_synth bench.face_stage --clips /tmp/synth --device cuda --max-clips 16 --repeat 2
    bench 80 preprocess_real_w16 "${preprocess[@]}" --no-profile --clips /tmp/real --size 20 --workers 16
    bench 90 preprocess_real_w4 "${preprocess[@]}" --no-profile --clips /tmp/real --size 10 --workers 4
    bench 60 preprocess_real_w1 "${preprocess[@]}" --clips /tmp/real --size 2 --workers 1 ;;
  synth)
    bench 110 preprocess_synth_w16_w4 "${preprocess[@]}" --no-profile --clips /tmp/synth --size 2 --workers 16 4
    rm -rf /tmp/synth12 && mkdir /tmp/synth12 && cp $(ls -d /tmp/synth/*.mp4 | head -12) /tmp/synth12
    bench 40 preprocess_synth_w1 "${preprocess[@]}" --no-profile --clips /tmp/synth12 --size 1 --workers 1 ;;
  *) echo "usage: bash bench/device_gpu_preprocess.sh media|real|synth CODE [CLIPS]" >&2; exit 2 ;;
esac

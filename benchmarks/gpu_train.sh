#!/usr/bin/env bash
# GPU check of the training harness: baseline and JPEG-DL ResNet-18 (CIFAR variant) on the CIFAR-10 JPEG
# training set, a few epochs each with bf16 autocast and channels_last, first eager and then with --compile.
# Prints images/s and clean test accuracy (n, Wilson 95% CI) of both, and the JPEG layer's step-time overhead
# against the baseline (goal: at most 5%). Sized to finish within 8 minutes on one H100-class GPU.
#
# Environment: ROBUSTJPEG_SHARED  folder holding data/cifar10-jpeg/{train,test}.tar.gz (default ../shared)
#              OUT (default runs), EPOCHS (default 4), DEVICE (default cuda), COMPILE (default 1),
#              EXTRA (more `robustjpeg train` flags, e.g. "--train-subset 512" for a CPU dry run)
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED="${ROBUSTJPEG_SHARED:-../shared}"
DATA="$SHARED/data/cifar10-jpeg"
OUT="${OUT:-runs}/gpu_train"
EPOCHS="${EPOCHS:-4}"
DEVICE="${DEVICE:-cuda}"
COMPILE="${COMPILE:-1}"
if [ ! -f "$DATA/train.tar.gz" ]; then
  echo "gpu_train: $DATA/train.tar.gz not found; set ROBUSTJPEG_SHARED to the folder holding data/" >&2
  exit 2
fi
export ROBUSTJPEG_CACHE="$OUT/cache"   # the 50,000 JPEGs are decoded once, then read from here
rm -rf "$OUT"/eager-* "$OUT"/compiled-*
mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi

# Same recipe for both variants; only --jpeg differs.
common=(--dataset "imagefolder:$DATA" --arch resnet18 --epochs "$EPOCHS" --batch-size 512 --lr 0.2
        --device "$DEVICE" --seed 0 ${EXTRA:-})

run_pair() {  # $1: label, then extra flags
  local label="$1"; shift
  python -m robustjpeg train "${common[@]}" "$@" -o "$OUT/$label-baseline"
  python -m robustjpeg train "${common[@]}" "$@" --jpeg -o "$OUT/$label-jpeg"
}

SECONDS=0
run_pair eager
echo "eager pair done after ${SECONDS}s"
python benchmarks/train_summary.py "$OUT"
if [ "$COMPILE" = "1" ]; then
  run_pair compiled --compile || echo "gpu_train: the --compile pair failed; eager figures above stand" >&2
  echo "compiled pair done after ${SECONDS}s"
  python benchmarks/train_summary.py "$OUT"
fi

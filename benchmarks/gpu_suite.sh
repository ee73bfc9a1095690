#!/bin/bash
# The figures docs/performance.md reports for one GPU, from the project's root, in stages:
#   bash benchmarks/gpu_suite.sh [b16] [xla] [l16] [h14]      (all four when none is named)
# b16: open_clip's ViT-B-16 at batch 256, this project's step against open_clip's compiled
#   and eager ones, unmasked and at 50%, with where our step's time goes (about 4 minutes).
# xla: the same step unmasked, compiled as it is, with each XLA option that may help on a
#   GPU, and keeping the norms' and activations' intermediates rather than recomputing them
#   (model.recompute_elementwise=false), to find which to set (about 4 minutes).
# l16, h14: FLIP's larger sizes as open_clip's ViT-L-16 and ViT-H-14, at the largest batch
#   at which our unmasked step fits the GPU, ours alone and then open_clip's compiled step
#   alone at that batch (about 4 minutes each).
# Each stage's JSON lines go to $OUT (default: workdirs/gpu_suite), one file per command;
# a stage past its time limit is cut off and the next one runs.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-workdirs/gpu_suite}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
versus() {  # seconds, output name, flags...
  timeout "$1" python3 -m benchmarks.versus_open_clip "${@:3}" > "$OUT/$2.txt" 2>&1
  echo "$2: exit $?"
  grep '^{' "$OUT/$2.txt" | tail -1
}
at_largest_batch() {  # size, output name
  config=configs/openclip_vit_b16.py:$1
  versus 240 "$2_ours" --config="$config" --batch_size=0 --open_clip= --rounds=3 --steps=5
  batch=$(grep -o '"batch_size": [0-9]*' "$OUT/$2_ours.txt" | head -1 | grep -o '[0-9]*$')
  if [ -n "$batch" ]; then
    versus 180 "$2_open_clip" --config="$config" --batch_size="$batch" --noours \
      --open_clip=compile --rounds=3 --steps=5
  fi
}
stages=${*:-b16 xla l16 h14}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for stage in $stages; do
  case $stage in
    b16) versus 300 b16 --config=configs/openclip_vit_b16.py --batch_size=256 --rounds=3 \
           --steps=8 --profile ;;
    xla) versus 300 xla --config=configs/openclip_vit_b16.py --batch_size=256 --ratios=0.0 \
           --open_clip= --rounds=3 --steps=8 --xla=xla_gpu_enable_triton_gemm=false \
           --xla=xla_gpu_enable_cublaslt=true --xla=xla_gpu_enable_command_buffer= \
           --variant=model.recompute_elementwise=false ;;
    l16) at_largest_batch ViT-L-16 l16 ;;
    h14) at_largest_batch ViT-H-14 h14 ;;
    *) echo "unknown stage $stage: expected b16, xla, l16 or h14" >&2; exit 2 ;;
  esac
done

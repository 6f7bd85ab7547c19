#!/usr/bin/env bash
# The GPU check, one prepared script (a few minutes on one GPU): on CUDA, fit / evaluate / generate /
# preflight for LoRA on a bf16 base and on a bnb-4bit base (QLoRA), printing where every parameter
# and buffer lives before fit, after fit and after Tuner.load, and the peak memory against
# preflight's estimate; then the 2-process run (torchrun), each rank on its own GPU.
#
#   scripts/gpu-check.sh                      # a model built on the fly (no download)
#   GPU_CHECK_MODEL=/path/to/model scripts/gpu-check.sh
#
# Fails loudly (exit 2) without CUDA, and with exit 1 when any check fails (the FAIL lines say which).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu-check: FAIL: no CUDA device is visible to torch (torch.cuda.is_available() is False)." >&2
    echo "gpu-check: this check runs on a GPU machine only; the CPU test suite covers the rest." >&2
    exit 2
fi
TORCHRUN=$(dirname "$(command -v "$PY")")/torchrun
[ -x "$TORCHRUN" ] || TORCHRUN=torchrun
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
MODEL=${GPU_CHECK_MODEL:-$("$PY" scripts/gpu_check.py build --out "$WORK/model" | tail -n 1)}
status=0

echo "== single process: lora on bf16, lora on bnb-4bit =="
timeout 240 "$PY" scripts/gpu_check.py single --model "$MODEL" --out "$WORK/single" || status=1

NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
if [ "$NGPU" -ge 2 ]; then
    echo "== 2 processes on $NGPU GPUs (QLoRA, one GPU per rank) =="
    timeout 150 "$TORCHRUN" --nproc_per_node 2 --master_port 29571 scripts/gpu_check.py ranks --model "$MODEL" --out "$WORK/ranks" || status=1
else
    echo "== 2 processes: only $NGPU GPU, so the ranks run on the CPU (gloo); per-rank GPU placement is NOT checked =="
    CUDA_VISIBLE_DEVICES= timeout 150 "$TORCHRUN" --nproc_per_node 2 --master_port 29571 scripts/gpu_check.py ranks --model "$MODEL" --out "$WORK/ranks" || status=1
fi
[ "$status" -eq 0 ] && echo "gpu-check: all checks passed" || echo "gpu-check: FAILED (see the FAIL lines above)" >&2
exit "$status"

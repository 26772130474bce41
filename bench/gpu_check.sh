#!/usr/bin/env bash
# The GPU checks in one go, for a session that is lent a CUDA machine (issue 13): the scoring stage in bf16 on CUDA
# against the same stage on CPU, then the worker end to end on CUDA at paced rates up to the CPU's sustainable
# one and beyond. Prints markdown (paste it into bench/results/) and keeps the JSON of each section in $OUT or
# bench/results/gpu/.
#
#   bash bench/gpu_check.sh MODEL_DIR            # MODEL_DIR: a trained final_moe_model (e.g. from `make demo`)
#
# Needs: a venv with a CUDA build of torch and the project installed (PY, default .venv/bin/python), the data in
# ../shared/data (or LOGMOE_SHARED_DATA). About 8 minutes on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:?usage: bash bench/gpu_check.sh MODEL_DIR}"
PY="${PY:-.venv/bin/python}"
DEST="${OUT:-bench/results/gpu}"
RATES="${RATES:-2000 4000 8000 12000}"
mkdir -p "$DEST"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device: nothing to check here"
print(f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

echo "## 1. Scoring stage: CPU (fp32) vs CUDA (bf16), same windows"
"$PY" bench/bench_perf.py --section scoring --model "$MODEL" --seed-budget 10 --json-out "$DEST/scoring_cpu.json"
"$PY" bench/bench_perf.py --section gpu --model "$MODEL" --seed-budget 10 --json-out "$DEST/scoring_gpu.json"

echo "## 2. The worker end to end on CUDA, paced (scoring process on the GPU, device=cuda)"
# shellcheck disable=SC2086  # RATES is a list of numbers
"$PY" bench/bench_perf.py --section paced --model "$MODEL" --rates $RATES --worker-set device=cuda \
    --json-out "$DEST/paced_cuda.json"

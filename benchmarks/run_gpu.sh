#!/usr/bin/env bash
# CIFAR-10 8-layer CNN: this project's jitted PGD-10 training step and PGD-20
# evaluation on one GPU, JAX vs PyTorch eager, alternated A/B in one process
# (benchmarks/vs_pytorch.py with --torch_device cuda).
#
# NOT RUN YET: no GPU was available when it was written. Prepared for the
# device machine (run from the repository root):
#
#   bash benchmarks/run_gpu.sh            # writes $OUT/gpu_vs_pytorch.txt
#
# It needs one Python environment with a CUDA build of jax (jax[cuda12] or
# jax[cuda13], the same jax version as requirements) and a CUDA build of torch,
# plus flax/optax/chex; the device machine has no network, so point PYTHON at
# such an environment (or install wheels from a local directory, WHEELS=dir).
# Precision: both sides float32 storage; JAX's default matmul/conv precision
# on NVIDIA GPUs may use TF32, and PyTorch allows TF32 for cuDNN convolutions
# by default (torch.backends.cudnn.allow_tf32) but not for matmuls. The script
# also runs JAX with --jax_default_matmul_precision=highest for a full-fp32 row.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-/tmp/gpu_bench}"
mkdir -p "$OUT"
if [[ -n "${WHEELS:-}" ]]; then
  "$PYTHON" -m pip install --no-index --find-links "$WHEELS" \
    "jax[cuda12]" torch flax optax chex numpy
fi
"$PYTHON" - <<'PY'
import sys
import jax, torch
ok = jax.default_backend() == 'gpu' and torch.cuda.is_available()
print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__,
      'cuda', torch.cuda.is_available())
sys.exit(0 if ok else 'run_gpu.sh: needs a GPU jax and a CUDA torch')
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_vs_pytorch.txt"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # share the GPU with torch
for model in cifar10_cnn mnist_cnn; do
  for b in 128 256; do
    echo "== $model batch $b (default precision)" | tee -a "$OUT/gpu_vs_pytorch.txt"
    PYTHONPATH=. timeout 240 "$PYTHON" -m benchmarks.vs_pytorch --model "$model" \
      --batch "$b" --eval_batches "$b" 512 --rounds 20 --torch_device cuda \
      --skip_flops 2>&1 | tee -a "$OUT/gpu_vs_pytorch.txt"
  done
done
echo "== cifar10_cnn batch 128, jax matmul precision highest" | tee -a "$OUT/gpu_vs_pytorch.txt"
JAX_DEFAULT_MATMUL_PRECISION=highest PYTHONPATH=. timeout 120 "$PYTHON" -m benchmarks.vs_pytorch \
  --model cifar10_cnn --batch 128 --skip_eval --rounds 20 --torch_device cuda \
  --skip_flops 2>&1 | tee -a "$OUT/gpu_vs_pytorch.txt"

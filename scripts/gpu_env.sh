# Sourced by the scripts/gpu_*.sh drivers, from the repository root: the
# environment of JAX runs on a lent GPU machine. Installs Python packages
# missing there from wheels in .whl/ (e.g. tensorboardX) into /tmp/site, puts
# the repository on PYTHONPATH and prints the versions, the GPU and the cores.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false \
  TF_CPP_MIN_LOG_LEVEL=2 TQDM_MININTERVAL=20
if compgen -G '.whl/*.whl' > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
python3 -c 'import sys, jax, flax, optax, orbax.checkpoint as o, chex, numpy
print("python", sys.version.split()[0], "jax", jax.__version__, "flax",
      flax.__version__, "optax", optax.__version__, "orbax",
      o.__version__, "numpy", numpy.__version__, jax.devices())' || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc

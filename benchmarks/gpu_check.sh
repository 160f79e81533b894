#!/usr/bin/env bash
# The GPU check of issue #22, one prepared script (at most about 8 minutes of device time):
#   1. installs what the device's image lacks (transformer-lens, sae-lens and their missing
#      dependencies) from wheels carried in .whl/;
#   2. runs the `cuda` tests (tests/test_cuda.py: CUDA result = CPU result on the zoo);
#   3. times the published workloads at the 37M shape (benchmarks/bench_scale.py: eval 2,000
#      quizzes x 4 models; patch heads, both methods, 200 pairs; SAE 1M tokens extrapolated to
#      30,000 x 4,096; universality 4 models, 1M tokens, one MLP layer: all 12 layers plan about
#      20 GiB with pass 1 in row blocks and 54 GiB of disk at this shape, too long for the check).
# Time limits: the tests 180 s, the workloads 270 s (each workload's numbers are written as it
# ends, so a run cut by the limit keeps what it measured).
#
# Usage:
#   bash benchmarks/gpu_check.sh --prepare-wheels   # HERE (network): download the wheels into .whl/
#   bash benchmarks/gpu_check.sh --list-wheels      # HERE: only say which (name==version)
#   bash benchmarks/gpu_check.sh                    # ON THE DEVICE (carry .whl): the check itself
#   bash benchmarks/gpu_check.sh --device cpu --tiny   # anywhere: the same steps on the CPU, tiny sizes
# Options: --device cuda|cpu (default cuda), --tiny (bundled zoo, tiny counts), --wheels DIR
# (default .whl), --out DIR (default $OUT, else gpu_check_out). Results: DIR/cuda_tests.log,
# DIR/scale.json, DIR/bench.log. Exit code: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda TINY=0 WHEELS=.whl PREPARE=0 OUTDIR="${OUT:-gpu_check_out}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    --prepare-wheels) PREPARE=1; shift ;;
    --list-wheels) PREPARE=2; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled

# The packages of the device's image ('cuda', read 2026-11-17: /work/.library/device/KINDS.md); the
# wheels to carry are culture-interp's dependencies (as installed here) that are not among them.
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-
pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-
cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-
operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py
mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-
cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-
nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-
headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-
core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

if [ "$PREPARE" != 0 ]; then
  if [ "$PREPARE" = 1 ]; then
    mkdir -p "$WHEELS"
    git check-ignore -q "$WHEELS" 2>/dev/null || echo "note: $WHEELS is not ignored by git; ignore it before committing" >&2
  fi
  # culture-interp's installed dependencies, transitively, minus what the device has
  NEED=$(DEVICE_HAS="$DEVICE_HAS" "$PY" - <<'EOF'
import os, re
from importlib import metadata
have = set(os.environ["DEVICE_HAS"].split())
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
seen, todo = {}, ["culture-interp"]
while todo:
    name = norm(todo.pop())
    if name in seen:
        continue
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    seen[name] = dist.version
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        todo.append(re.split(r"[ ;<>=!~\[(]", req, 1)[0])
print(" ".join(f"{n}=={v}" for n, v in sorted(seen.items()) if n not in have and n != "culture-interp"))
EOF
)
  echo "wheels to carry: $NEED"
  [ "$PREPARE" = 2 ] && exit 0
  for spec in $NEED; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" "$spec" || echo "warning: no wheel for $spec (add it by hand)" >&2
  done
  du -sh "$WHEELS"; exit 0
fi

mkdir -p "$OUTDIR"
STATUS=0
T0=$(date +%s)

# 1. what the image lacks, from the carried wheels
if ! "$PY" -c "import transformer_lens, sae_lens, typer, rich" 2>/dev/null; then
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$WHEELS"/*.whl || { echo "error: installing the wheels of $WHEELS failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
  else
    echo "error: transformer_lens / sae_lens missing and no wheels in $WHEELS (run --prepare-wheels here first)" >&2
    exit 1
  fi
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
"$PY" -c "import torch, transformer_lens, sae_lens; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  || { echo "error: the packages do not import" >&2; exit 1; }
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "error: --device cuda but torch sees no GPU (use --device cpu for a dry run)" >&2; exit 1
fi

# 2. the cuda tests (CPU vs CPU with --device cpu)
TEST_ENV=()
[ "$DEVICE" = cpu ] && TEST_ENV=(CULTURE_CUDA_TEST_DEVICE=cpu)
env "${TEST_ENV[@]}" timeout 180 "$PY" -m pytest tests/test_cuda.py -m cuda -q -p no:cacheprovider -rs 2>&1 \
  | tee "$OUTDIR/cuda_tests.log" | tail -15
[ "${PIPESTATUS[0]}" = 0 ] || { echo "cuda tests: FAILED (see $OUTDIR/cuda_tests.log)"; STATUS=1; }

# 3. the published workloads at the 37M shape
BENCH=(--device "$DEVICE" --json "$OUTDIR/scale.json")
[ "$TINY" = 1 ] && BENCH+=(--tiny)
timeout 270 "$PY" benchmarks/bench_scale.py "${BENCH[@]}" > "$OUTDIR/bench.log" 2>&1
RC=$?
grep '^== ' "$OUTDIR/bench.log"
if [ "$RC" != 0 ]; then
  echo "bench: exit $RC ($([ $RC = 124 ] && echo 'time limit: the workloads above finished' || echo failed); see $OUTDIR/bench.log)"
  tail -5 "$OUTDIR/bench.log"; STATUS=1
fi
echo "gpu_check: $(( $(date +%s) - T0 )) s, status $STATUS, results in $OUTDIR"
exit $STATUS

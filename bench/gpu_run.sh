#!/usr/bin/env bash
# The GPU check as it runs on a lent GPU machine with no package index (see bench/README.md):
# onnxruntime-gpu arrives as xz parts in /tmp/chunks (carried by earlier calls), the other wheels
# in .whl312/, the generated protobuf modules in runtime/_pb/. Installs into /tmp/site,
# then runs bench/gpu_check.py and the server, batching and repository tests with every server
# forced onto CUDA. Writes logs to $OUT.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl312/*.whl || exit 1
cat /tmp/chunks/ortpart.* | xz -dc -T0 | tar x -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD RUNTIME_NO_EXTENSIONS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import onnxruntime as o, numpy, grpc, google.protobuf as p; print('onnxruntime', o.__version__, o.get_available_providers(), 'numpy', numpy.__version__, 'grpcio', grpc.__version__, 'protobuf', p.__version__)"
timeout 240 python3 bench/gpu_check.py --seconds 2 --json "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
check=${PIPESTATUS[0]}
# Deselected: two tests that assert the CPU placement a machine without a GPU reports.
MODEL_RUNTIME_EXECUTION_PROVIDER=cuda timeout 240 python3 -m pytest -p no:cacheprovider -q -o addopts="" \
    -k "not test_model_metadata and not test_model_config" tests/server tests/batching tests/repository 2>&1 | tee "$OUT/pytest_cuda.log" | tail -25
tests=${PIPESTATUS[0]}
echo "gpu_check exit $check, pytest on CUDA exit $tests"

#!/usr/bin/env bash
# The GPU check of docs/scale.md, under 8 minutes on one GPU: the tests that run JAX on the
# accelerator, then bench/device_check.py (a train step of each stage with MFU against the
# card's bfloat16 peak, cached decoding throughput). Everything lands in one JSON file.
#
#   bench/device_check.sh [OUT_DIR]         on a GPU machine (default OUT_DIR bench/results/device_check)
#   bench/device_check.sh --dry [OUT_DIR]   the CPU dry path: tiny sizes, one quick test
#
# Needs the project's environment with jax's CUDA plugin (jax[cuda12]==0.10.2) on PYTHON
# (default: python). DEVICE_CHECK_TESTS overrides the test selection. The time limits (240 s for
# the tests, 330 s for the measurements) hold on a GPU; the dry path on a busy CPU gets 1500 s.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=()
if [[ "${1:-}" == "--dry" ]]; then DRY=(--dry); shift; fi
OUT="${1:-bench/results/device_check}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
# Single-device, in-process tests only: the 8-fake-CPU-device mesh tests do not apply to one GPU,
# and the promot-train subprocess run is a CPU test.
SELECT='not 8_devices and not 8_fake and not both_ways and not promot_train'
TEST_LIMIT=240
CHECK_LIMIT=330
if [[ ${#DRY[@]} -gt 0 ]]; then
  TEST_LIMIT=1500
  CHECK_LIMIT=1500
  export JAX_PLATFORMS=cpu
  TESTS="${DEVICE_CHECK_TESTS:-tests/test_scale.py::test_stacked_layer_leaves_are_found_by_their_layers_key}"
else
  # tests/conftest.py defaults to CPU and hides GPUs unless these are set.
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
  export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
  TESTS="${DEVICE_CHECK_TESTS:-tests/test_scale.py tests/test_model.py tests/test_decoding.py tests/test_losses.py}"
fi
start=$(date +%s)
# float32 tolerances of the tests assume full-precision matmuls (GPUs default to TF32).
# A failing test is counted in the JSON, not fatal: the measurements still run.
JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$TEST_LIMIT" "$PYTHON" -m pytest -q -p no:cacheprovider \
  $TESTS -k "$SELECT" --junitxml "$OUT/tests.xml" || echo "device_check: some tests failed (see $OUT/tests.xml)"
timeout "$CHECK_LIMIT" "$PYTHON" bench/device_check.py "${DRY[@]}" --out "$OUT/device_check.json" \
  --junit "$OUT/tests.xml" --tests_command "pytest $TESTS -k '$SELECT'"
echo "device_check: $(( $(date +%s) - start )) s; wrote $OUT/device_check.json"

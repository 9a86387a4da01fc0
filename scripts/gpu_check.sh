#!/usr/bin/env bash
# The prepared accelerator check (benchmarks/gpu_check.py): bf16 SFT, GRPO and DPO steps of a
# ~0.5B random-init Llama, tokens/s and MFU, and hf decode at batch 64 against the HBM roofline.
#   scripts/gpu_check.sh                 # on a GPU machine (about 5 minutes on an H100)
#   scripts/gpu_check.sh --cpu --tiny    # the same code path on a tiny model, CPU (the test runs this)
# The GPU machine has torch, transformers and accelerate; carry the pure-Python wheels trl,
# datasets and math-verify (pip download --no-deps) and install them there first.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
[ -x "$here/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && py="$here/.venv/bin/python"
mkdir -p "${OUT:-$here/results/gpu_check}"
PYTHONPATH="$here/workflow${PYTHONPATH:+:$PYTHONPATH}" exec "$py" "$here/benchmarks/gpu_check.py" \
    --json "${OUT:-$here/results/gpu_check}/gpu_check.json" "$@"

#!/usr/bin/env bash
# Same params, same bytes: compare the results/ of two run folders (checkouts that ran the DAG).
#   scripts/repro_check.sh RUN_A RUN_B
# Exclusions (printed): results/logs/**, results/.resume/** (training working state), mlflow/**,
# and JSON keys that measure time (seconds, tokens_per_s, step_time, train_runtime, *_per_second).
# Any other difference fails (exit 1).
set -euo pipefail
if [ "$#" -lt 2 ]; then echo "usage: $0 [--across-commits] RUN_A RUN_B" >&2; exit 2; fi
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py=python3
PYTHONPATH="$here/workflow${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m librarm.run.repro "$@"

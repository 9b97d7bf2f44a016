#!/usr/bin/env bash
# The README's main-job command: set up (idempotent), then run the end-to-end demo.
# The zoo is kept in runs/demo/zoo and reused on the next run once it verifies.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/vimw demo --workdir runs/demo "$@"

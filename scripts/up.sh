#!/usr/bin/env bash
# Sets up on first use, then starts Tide on embedded defaults (local Ray, tiny model,
# 1 prefill + 1 decode, shared-memory KV). Extra arguments go to `tide up`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/tide up "$@"

#!/usr/bin/env bash
# Sets up on first use, then runs the whole test suite (unit + integration on a local Ray
# cluster with real vLLM engines). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest -ra "$@" tests

#!/usr/bin/env bash
# One set-up step for a fresh machine; safe to run again (each step skips what is done).
#   - Debian packages the tests need (Prometheus server and promtool)
#   - .venv with Tide, vLLM's CPU build on torch's CPU wheel, and the dev tools
#   - removes torchvision/torchaudio/torchcodec: PyPI's builds crash beside CPU torch
#   - builds the tiny test model
# Environment: TIDE_EXTRAS (default "cpu,dev"), TIDE_SKIP_APT=1 to skip apt.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
extras=${TIDE_EXTRAS:-cpu,dev}
steps=5
step() { printf '\n[setup %s/%s] %s\n' "$1" "$steps" "$2"; }

step 1 "Debian packages (prometheus, promtool)"
if [ "${TIDE_SKIP_APT:-0}" = 1 ] || command -v promtool >/dev/null 2>&1; then
  echo "already installed"
else
  apt_get() { if [ "$(id -u)" = 0 ]; then apt-get "$@"; else sudo apt-get "$@"; fi; }
  apt_get update -q
  DEBIAN_FRONTEND=noninteractive apt_get install -y -q --no-install-recommends prometheus
fi

step 2 "virtual environment (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
echo "$(.venv/bin/python --version) at $root/.venv"

step 3 "Python packages (tide[$extras], vLLM CPU build, torch CPU wheel)"
stamp=.venv/.tide-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)-$extras
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "up to date"
else
  # torch first, pinned to the CPU build vLLM's CPU wheel was built against.
  .venv/bin/pip install --progress-bar on "torch==2.13.0"
  .venv/bin/pip install --progress-bar on -e ".[$extras]"
  echo "$want" > "$stamp"
fi

step 4 "remove torchvision/torchaudio/torchcodec (crash beside CPU torch)"
.venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python - <<'EOF'
import importlib.util, torch
left = [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)]
assert not left, f"still installed: {left}"
print(f"torch {torch.__version__}")
EOF

step 5 "tiny model"
.venv/bin/tide model build tiny
echo
echo "setup done"

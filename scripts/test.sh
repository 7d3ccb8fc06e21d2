#!/usr/bin/env bash
# Install edgekit with its test extras into .venv, install the system tools the real-component
# tests use (OpenSSH server, Chromium, qemu-user-static, debootstrap), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "installing system packages: ${need[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch is pinned to the CPU build 2.13.0 in setup.py; nothing here may upgrade it.
python -m pip install -q -e ".[test,minilm,efficientnet]"
python - <<'PY'
import torch, sys
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}"
assert not torch.version.cuda, "a CUDA build of torch was installed; expected the CPU wheel"
print(f"torch {torch.__version__} (CPU build) ok", file=sys.stderr)
PY
# caches (zoo weights, numba kernels, the arm64 root file system) stay inside the checkout
export EDGEKIT_CACHE="${EDGEKIT_CACHE:-$PWD/.cache/edgekit}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.cache/numba}"
# Arguments (a file, -k, -x) run as given, in one process. The whole suite runs on every core with pytest-xdist
# (a file's tests stay on one worker, so its module fixtures are built once): 873 s against 1345 s in one process
# on a 2-core AVX2 host, 2026-12-04. Tests marked `serial` judge how busy the host is, and the other worker
# would be a busy neighbour, so they run afterwards on an otherwise idle host.
if [ $# -gt 0 ]; then exec python -m pytest -q "$@"; fi
jobs=$(python -c "import os; print(min(len(os.sched_getaffinity(0)), 4))")
# zoo:digits-cnn trains on first use (about 70 s on 2 idle cores): once here, on every core, rather than in each
# worker at the same time, each on one core
python -c "from edgekit import zoo; zoo.load('digits-cnn')"
rc=0
if [ "$jobs" -gt 1 ]; then
  python -m pytest -q -n "$jobs" --dist loadfile -m "not serial" || rc=$?
else
  python -m pytest -q -m "not serial" || rc=$?
fi
python -m pytest -q -m serial || rc=$((rc ? rc : $?))
exit "$rc"

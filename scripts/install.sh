#!/usr/bin/env bash
# Creates .venv and installs the service with everything its tests need, from nothing:
# Debian packages (when run as root; otherwise prints the apt-get line), the CPU build of
# torch, this project, and the embedded default models. Called by `make` when
# pyproject.toml or this script changed; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
APT_PACKAGES=(espeak-ng sox)

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
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip >/dev/null
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e '.[test]'

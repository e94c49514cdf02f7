# The two commands a new user needs: `make run` and `make test`. Both install what is
# missing first (scripts/install.sh), then prepare the embedded default models.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOMAIN ?=
SANS ?=
CERTS_DIR ?= certs
PYTEST_ARGS ?=
# `make image`: podman if present, else docker. VARIANT=gpu (default) or cpu.
CONTAINER_TOOL ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
VARIANT ?= gpu
IMAGE ?= reflector-gpu:$(if $(filter cpu,$(VARIANT)),cpu,latest)
IMAGE_BUILD_ARGS ?=

.PHONY: install models run test test-fast cert bench image image-test image-gpu-test lint-kubernetes

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh
	touch $@

install: $(STAMP)

models: $(STAMP)
	$(PY) -m app.models prepare

# `make run` serves the embedded models and never reaches a model hub; `make run
# HF_HUB_OFFLINE=0` lets `auto` fetch its production models as the image does.
HF_HUB_OFFLINE ?= 1
run: models
	HF_HUB_OFFLINE=$(HF_HUB_OFFLINE) $(PY) entrypoint.py

test: models
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast tier alone: the HTTP side, the workers' server and scheduler with stub engines,
# everything that needs no model (about 30 s on 2 cores; no model preparation).
test-fast: $(STAMP)
	$(PY) -m pytest tests/fast $(PYTEST_ARGS)

cert: $(STAMP)
	$(PY) -m app.tls make-cert --domain "$(DOMAIN)" --sans "$(SANS)" --out "$(CERTS_DIR)"

bench: models
	$(PY) bench/transcription.py
	$(PY) bench/concurrency.py
	$(PY) bench/live_meetings.py
	$(PY) bench/diarization.py
	$(PY) bench/audio.py
	$(PY) bench/acme_start.py
	$(PY) bench/known_speakers.py
	$(PY) bench/auto_models.py
	$(PY) bench/realtime.py

# podman/buildah keep HEALTHCHECK only in the docker format; docker always builds that one.
image:
	$(CONTAINER_TOOL) build $(if $(filter podman,$(notdir $(CONTAINER_TOOL))),--format docker) \
		--build-arg VARIANT=$(VARIANT) $(IMAGE_BUILD_ARGS) --tag $(IMAGE) --file Containerfile .

# Builds the CPU image from a locally made base and checks it with podman (scripts/image-test.sh).
image-test: $(STAMP)
	bash scripts/image-test.sh

# The GPU image built the same way and checked WITHOUT a GPU: CPU fallback transcribes the
# sample, CUDA libraries resolve (ldd), torch's CUDA build. Downloads ~4 GB; not in CI.
image-gpu-test: $(STAMP)
	VARIANT=gpu bash scripts/image-test.sh

# checkov on the rendered Kubernetes manifests, from its own virtual environment (its
# dependencies clash with the service's). Deliberate exceptions are annotated in the manifests.
CHECKOV := build/checkov/bin/checkov
lint-kubernetes: $(STAMP)
	[ -x $(CHECKOV) ] || { $(PYTHON) -m venv build/checkov && build/checkov/bin/pip install -q checkov==3.3.30; }
	mkdir -p build
	for k in base overlays/cpu; do \
	  out=build/kubernetes-$$(basename $$k).yaml; \
	  $(VENV)/bin/kubectl kustomize deploy/kubernetes/$$k > $$out \
	  && $(CHECKOV) --quiet --compact --skip-download --framework kubernetes -f $$out || exit 1; \
	done

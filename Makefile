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

.PHONY: install models run test cert bench

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh
	touch $@

install: $(STAMP)

models: $(STAMP)
	$(PY) -m app.models prepare

run: models
	$(PY) entrypoint.py

test: models
	$(PY) -m pytest $(PYTEST_ARGS)

cert: $(STAMP)
	$(PY) -m app.tls make-cert --domain "$(DOMAIN)" --sans "$(SANS)" --out "$(CERTS_DIR)"

bench: models
	$(PY) bench/transcription.py
	$(PY) bench/diarization.py
	$(PY) bench/audio.py

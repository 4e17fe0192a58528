# speakerflow: `make demo` sets everything up and runs the demo; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

export PYANNOTE_METRICS_ENABLED := 0

.PHONY: setup demo test up down clean

setup: $(STAMP) system-packages kafka-jars

# espeak-ng speaks the demo's and the tests' conversations (Debian package).
system-packages:
	@command -v espeak-ng >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q espeak-ng; }
.PHONY: system-packages

# resemblyzer pins webrtcvad, which no longer builds on current setuptools, so it goes in
# with --no-deps; webrtcvad-wheels and librosa (project dependencies) provide what it needs.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps resemblyzer==0.1.4
	touch $(STAMP)

kafka-jars: $(STAMP)
	$(VENV)/bin/speakerflow kafka-jars
.PHONY: kafka-jars

demo: setup
	$(VENV)/bin/speakerflow demo

test: setup
	$(PY) -m pytest -q

up: setup
	$(VENV)/bin/speakerflow up

down:
	@test -x $(VENV)/bin/speakerflow && $(VENV)/bin/speakerflow down || echo "nothing to stop"

clean: down
	rm -rf $(VENV) .run

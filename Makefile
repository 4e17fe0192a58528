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

# Debian's Chromium for the web console's browser tests (tests/integration/browser): Playwright drives
# it and never downloads a browser of its own. Only the tests need it, so `make demo` does not install it.
chromium:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }
.PHONY: chromium

kafka-jars: $(STAMP)
	$(VENV)/bin/speakerflow kafka-jars
.PHONY: kafka-jars

demo: setup
	$(VENV)/bin/speakerflow demo

# helm for the chart tests (tests/deploy/test_helm.py), built from source through the Go module
# proxy into .tools/; the binary is named by version so bumping HELM_VERSION rebuilds it.
HELM_VERSION := v3.22.0
# What helm's own release build stamps in; without it `helm template` assumes Kubernetes 1.20.
# The minor is that of the client-go in helm's go.mod (0.37 for v3.22.0).
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
  $(foreach pkg,pkg/chartutil pkg/lint/rules,-X helm.sh/helm/v3/$(pkg).k8sVersionMajor=1 -X helm.sh/helm/v3/$(pkg).k8sVersionMinor=37)
TOOLS := .tools/bin
GO ?= $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)

tools: $(TOOLS)/helm-$(HELM_VERSION)
.PHONY: tools

$(TOOLS)/helm-$(HELM_VERSION):
	mkdir -p $(TOOLS)/helm-build
	GOBIN=$(CURDIR)/$(TOOLS)/helm-build GOPROXY=https://proxy.golang.org CGO_ENABLED=0 \
	  $(GO) install -trimpath -ldflags '$(HELM_LDFLAGS)' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(TOOLS)/helm-build/helm $@ && rmdir $(TOOLS)/helm-build
	ln -sfn helm-$(HELM_VERSION) $(TOOLS)/helm

# The compose CLI for tests/deploy/test_compose.py (`docker compose config` validates docker-compose*.yml),
# built from the Go module proxy like helm. Compose's go.mod carries exclude directives, which
# `go install pkg@version` refuses, so it is built from a throwaway module that requires it and
# copies its go line and excludes (the build then resolves the same dependency versions).
COMPOSE_VERSION := v5.5.1
COMPOSE_MODULE := github.com/docker/compose/v5

tools: $(TOOLS)/docker-compose-$(COMPOSE_VERSION)

$(TOOLS)/docker-compose-$(COMPOSE_VERSION):
	rm -rf $(TOOLS)/compose-build && mkdir -p $(TOOLS)/compose-build
	cd $(TOOLS)/compose-build && \
	  gomod=$$($(GO) mod download -json $(COMPOSE_MODULE)@$(COMPOSE_VERSION) | sed -n 's/^\s*"GoMod": "\(.*\)",$$/\1/p') && \
	  { echo 'module speakerflow.tools/compose'; grep '^go ' "$$gomod"; \
	    echo 'require $(COMPOSE_MODULE) $(COMPOSE_VERSION)'; sed -n '/^exclude (/,/^)/p' "$$gomod"; } > go.mod && \
	  GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 $(GO) build -trimpath \
	    -ldflags '-s -w -X $(COMPOSE_MODULE)/internal.Version=$(COMPOSE_VERSION)' -o $(CURDIR)/$@ $(COMPOSE_MODULE)/cmd
	rm -rf $(TOOLS)/compose-build
	ln -sfn docker-compose-$(COMPOSE_VERSION) $(TOOLS)/docker-compose

# livekit-server for the LiveKit ingest test (tests/integration/test_livekit.py), from the Go module
# proxy like helm. Pinned at v1.13.5: newer versions depend on forks the proxy does not serve.
# The module's binary is named `server`; it is kept under its versioned name, so a present binary
# skips the (about 4 minute) build.
LIVEKIT_VERSION := v1.13.5

tools: $(TOOLS)/livekit-server-$(LIVEKIT_VERSION)

$(TOOLS)/livekit-server-$(LIVEKIT_VERSION):
	rm -rf $(TOOLS)/livekit-build && mkdir -p $(TOOLS)/livekit-build
	GOBIN=$(CURDIR)/$(TOOLS)/livekit-build GOPROXY=https://proxy.golang.org CGO_ENABLED=0 \
	  $(GO) install -trimpath -ldflags '-s -w' github.com/livekit/livekit-server/cmd/server@$(LIVEKIT_VERSION)
	mv $(TOOLS)/livekit-build/server $@ && rmdir $(TOOLS)/livekit-build
	ln -sfn livekit-server-$(LIVEKIT_VERSION) $(TOOLS)/livekit-server

# Lint and format are checked first: CI fails on either before it spends time on the suite.
# One pytest run over all of tests/ (unit, integration on one broker, deploy), so it always
# collects tests; the slowest are listed, to keep an eye on the suite's time.
test: setup tools chromium lint
	$(PY) -m pytest -q --durations=10

# The fuzz tests with a long budget (make test runs them with a bounded one): tests/unit/conftest.py.
fuzz: setup
	FUZZ_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider tests/unit/test_fuzz_protocol.py tests/unit/test_fuzz_bus_decode.py
.PHONY: fuzz

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
.PHONY: lint

# The accuracy tables (docs/accuracy.md): DER of both profiles with the speaker count estimated and
# given (each reference's own), live at each latency and the report, on each labelled folder of
# the shared data (read in place), without the recurring-reader pair the targets leave out.
DATA ?= ../shared/data
DEVSET ?= $(DATA)/devset
ACCURACY_SETS ?= $(DEVSET) $(DATA)/devset-hard/far $(DATA)/devset-hard/phone $(DATA)/devset-hard/noisy $(DATA)/real
EXCLUDE ?= --exclude dev09 --exclude dev10
# Known speakers (docs/speakers.md): enrolment clips and conversations of enrolled and unknown readers.
ENROLLMENT ?= $(DATA)/enrollment
EVAL_ROWS := --num-speakers none,oracle --labels live,report
accuracy: setup
	@for set in $(ACCURACY_SETS); do \
	  echo "== $$set"; \
	  $(VENV)/bin/speakerflow eval $$set $(EXCLUDE) --profile accurate --latency 0.5,1,5 $(EVAL_ROWS) || exit 1; echo; \
	  $(VENV)/bin/speakerflow eval $$set $(EXCLUDE) --profile fast $(EVAL_ROWS) || exit 1; echo; \
	done
	@echo "== known speakers: $(ENROLLMENT)"
	$(VENV)/bin/speakerflow eval $(ENROLLMENT) --enroll $(ENROLLMENT)/enroll --profile accurate --latency 1
	$(VENV)/bin/speakerflow eval $(ENROLLMENT) --enroll $(ENROLLMENT)/enroll --profile fast
	@echo "== known speakers, false accepts on strangers: $(DEVSET) (none of its readers enrolled)"
	$(VENV)/bin/speakerflow eval $(DEVSET) --enroll $(ENROLLMENT)/enroll --profile accurate --latency 1
	$(VENV)/bin/speakerflow benchmark $(DEVSET)/audio/dev01.flac --stages --profile accurate
	$(VENV)/bin/speakerflow benchmark $(DEVSET)/audio/dev01.flac --stages --profile fast
.PHONY: accuracy

up: setup
	$(VENV)/bin/speakerflow up

down:
	@test -x $(VENV)/bin/speakerflow && $(VENV)/bin/speakerflow down || echo "nothing to stop"

clean: down
	rm -rf $(VENV) .run

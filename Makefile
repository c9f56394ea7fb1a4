# distlab — the two commands a newcomer needs are `make up` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LAB    ?=
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
PYTEST := $(BIN)/pytest -p no:cacheprovider

.PHONY: host up down status test test-scale test-cluster unit integration e2e bench soak images protos lint clean doctor

$(STAMP): pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[host,dev]'
	@rm -f $(VENV)/.installed-*; touch $@

protos: $(STAMP)  ## generate gRPC stubs into nodes/rpc/ (never committed)
	@PYTHON=$(BIN)/python scripts/gen-protos.sh

host:  ## a fresh Debian machine gets Docker, Compose v2 and debootstrap (scripts/setup-host.sh)
	@if docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then :; \
	else echo "Docker engine or Compose v2 missing: running scripts/setup-host.sh"; \
	  scripts/setup-host.sh; fi

images: host  ## build the images (registry or offline path; says which)
	@scripts/images.sh

up: protos images  ## bring the default lab (or LAB=name) up
	@$(BIN)/distlab up $(LAB)

down: $(STAMP)
	@$(BIN)/distlab down

status: $(STAMP)
	@$(BIN)/distlab status

doctor: protos
	@$(BIN)/distlab doctor

# Unit and integration tests are spread over every core (pytest-xdist): most of their
# time is spent waiting on timers, and each makes its own ports and directories. The e2e
# tests share one Docker engine and the labs on it, so they run one at a time after.
test: protos images  ## everything CI runs: unit and integration (on every core), then e2e
	$(PYTEST) tests/unit tests/integration -n auto -q -ra --durations=10
	$(PYTEST) tests/e2e -q -ra --durations=15

test-scale: protos images  ## labs at scale (64 Chord peers for 10 minutes); CI runs it too
	$(PYTEST) tests/scale -m scale -q -ra -s

test-cluster: protos images  ## a swarm of three test hosts over SSH (docs/cluster.md); CI runs it too
	@DISTLAB_CLUSTER_IMAGES=1 scripts/images.sh
	$(PYTEST) tests/cluster -m cluster -q -ra -s

unit: protos
	$(PYTEST) tests/unit -n auto -q

integration: protos
	$(PYTEST) tests/integration -n auto -q

e2e: protos images
	$(PYTEST) tests/e2e -q -ra

bench: protos host  ## measured figures, written to reports/bench/*.json (HAProxy image too)
	@DISTLAB_BENCH_IMAGES=1 scripts/images.sh
	$(BIN)/python -m bench

soak: protos  ## 30 minutes of bank load on loopback: is state flat? reports/bench/soak.json
	$(BIN)/python -m bench.soak

lint: $(STAMP)
	$(BIN)/ruff check .

clean: $(STAMP)  ## remove every labelled container, network and volume, and local state
	-$(BIN)/distlab clean
	rm -rf .distlab reports

# The single human entry point. Every target bootstraps what it needs on a fresh machine.
# `make help` lists every target from the `## ` comments beside them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PROTO := protos/seqpredict/v1/seqpredict.proto
GEN := protos/seqpredict/v1/seqpredict_pb2.py
SHIPPED := models/seqpredict/models/shipped
CHECKPOINT := $(SHIPPED)/shakespeare-lstm.pt
DATA := models/data/shakespeare
# `make train` writes a new run folder; `make ship-model RUN=…` is the only step that replaces
# the shipped checkpoint, so a stopped or worse run never ends up behind `make run`.
RUN_DIR := $(or $(RUN_DIR),models/runs/$(shell date +%Y%m%d-%H%M%S))
# glibc keeps large freed blocks instead of returning them to the OS every step: 1.6x faster training here.
TRAIN_ENV := MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824
TRAIN_FLAGS := --hidden-size 256 --num-layers 2 --embed-dim 64 --dropout 0.2 --batch-size 64 --seq-len 128 \
	--lr 2e-3 --max-steps 12000 --eval-every 500 --seed 1234
# pip -qq: errors only. setuptools' note on every editable install ("be careful with folders…")
# is information, not a problem; the rest of a normal install is silence.
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip -qq

.PHONY: help install shell system-deps docker-deps gen run test test-fast test-docker lint format train ship-model \
	bench-peers bench-peers-short java-runtime \
	eval bench bench-short soak dist docker-wheels clean

help: ## list every target
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{ printf "  make %-18s %s\n", $$1, $$2 }'

$(BIN)/pip:
	@echo "first set-up: a .venv with torch $(TORCH) (CPU) and the other dependencies; about a minute here," \
		"a few more where the wheels must be downloaded"
	@echo "  creating .venv" && $(PYTHON) -m venv $(VENV) && $(PIP) install --upgrade pip

# torch is pinned exactly: 2.13.0 is a local CPU wheel here; anything looser pulls a CUDA build.
# The client distribution first: the server's `seqpredict-client==…` is then this checkout's.
TORCH := 2.13.0
$(STAMP): pyproject.toml client/pyproject.toml | $(BIN)/pip
	@echo "  installing torch==$(TORCH) (CPU)" && $(PIP) install torch==$(TORCH)
	@echo "  installing seqpredict-client and seqpredict (editable), with the dev tools"
	@$(PIP) install -e ./client -e '.[dev]'
	@touch $@
	@echo "  generating the gRPC code from $(PROTO)" && $(PY) protos/generate.py >/dev/null
	@echo "ready: .venv/bin/seqpredict-server and .venv/bin/seqpredict (\`make shell\` puts them on PATH)"

install: $(STAMP) $(GEN) ## the .venv: torch (CPU), both distributions (editable), generated code

shell: install ## a shell with .venv activated, so `seqpredict` and `seqpredict-server` are on PATH (exit to leave)
	@echo "(.venv active: seqpredict, seqpredict-server, seqpredict-train, seqpredict-eval; exit to leave)"
	@bash --rcfile <(echo '[ -f ~/.bashrc ] && . ~/.bashrc; . $(BIN)/activate') -i

# Debian tools the tests use as real parts: promtool and prometheus (metrics and alert checks
# against a real Prometheus), docker-compose (validates docker-compose.yml; no engine needed),
# redis-server and nginx (several replicas sharing sessions, behind the reference proxy).
SYSTEM_TOOLS := promtool:prometheus prometheus:prometheus docker-compose:docker-compose \
	redis-server:redis-server redis-cli:redis-tools nginx:nginx-light
# And for `make test-docker`: a Docker engine of the tests' own, and mmdebstrap for a stand-in
# base image when Docker Hub cannot be reached.
DOCKER_TOOLS := dockerd:docker.io containerd:containerd runc:runc iptables:iptables mmdebstrap:mmdebstrap \
	$(SYSTEM_TOOLS)
define apt_install_missing
	@missing=""; for pair in $(1); do \
	  command -v $${pair%%:*} >/dev/null || [ -x /usr/sbin/$${pair%%:*} ] || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing from Debian:$$missing"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

system-deps: ## Debian's prometheus/promtool, docker-compose, redis-server and nginx, which the tests run (apt, when missing)
	$(call apt_install_missing,$(SYSTEM_TOOLS))

docker-deps: ## Debian's docker.io, containerd, runc, iptables and mmdebstrap for make test-docker (apt)
	$(call apt_install_missing,$(DOCKER_TOOLS))

$(GEN): $(PROTO) $(STAMP)
	@echo "generating the gRPC code from $(PROTO)" && $(PY) protos/generate.py >/dev/null

gen: $(STAMP) ## regenerate protos/seqpredict/v1/*_pb2*.py from the .proto
	$(PY) protos/generate.py

run: install ## serve the shipped checkpoint on 127.0.0.1:50051 (metrics :9095)
	$(BIN)/seqpredict-server

lint: install ## ruff check + ruff format --check (make format fixes)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## ruff format + ruff check --fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint system-deps ## lint + the whole test suite (not the Docker tests: make test-docker)
	$(BIN)/pytest -q -m "not docker"

test-fast: install ## the suite without the slow (process-level) tests
	$(BIN)/pytest -q -m "not slow and not docker"

# -s: the Docker tests print their progress (engine, base image, build steps, figures) as they go.
test-docker: install docker-deps ## build and run the image, the compose stack and its cluster profile on a private Docker engine (5-8 min)
	$(BIN)/pytest -s -rs -p no:cacheprovider -m docker tests/docker

train: install ## train a model into a new run folder models/runs/<time>/ (about an hour on 2 cores)
	@echo "training into $(RUN_DIR); Ctrl-C stops it, keeping the best checkpoint so far." \
		"The shipped model changes only with: make ship-model RUN=$(RUN_DIR)"
	@$(TRAIN_ENV) $(BIN)/seqpredict-train --train $(DATA)/shakespeare-train.txt --val $(DATA)/shakespeare-val.txt \
		--out $(RUN_DIR)/shakespeare-lstm.pt $(TRAIN_FLAGS) || { code=$$?; [ $$code = 130 ] || exit $$code; }

ship-model: ## replace the shipped checkpoint with a finished run's: make ship-model RUN=models/runs/<time>
	@test -n "$(RUN)" || { echo "usage: make ship-model RUN=models/runs/<time> (the folder make train printed)"; exit 2; }
	@test -f "$(RUN)/shakespeare-lstm-record.json" || { echo "$(RUN) is not a finished run (no" \
		"shakespeare-lstm-record.json: stopped early, or not a make train folder); nothing replaced"; exit 1; }
	cp $(RUN)/shakespeare-lstm.pt $(RUN)/shakespeare-lstm-record.json $(RUN)/shakespeare-lstm-curve.* $(SHIPPED)/
	@echo "shipped: $(CHECKPOINT) is now $(RUN)'s; make eval checks it, git diff shows the record"

eval: install ## evaluate a checkpoint on the validation plays (CKPT=…, default the shipped one)
	$(BIN)/seqpredict-eval $(or $(CKPT),$(CHECKPOINT)) --text $(DATA)/shakespeare-val.txt

# Both include issue 13's cluster section (redis-server, nginx: system-deps); BENCH_ARGS=--no-cluster skips it.
bench: install system-deps ## full benchmark, about 23 minutes (writes bench/RESULTS.md)
	$(PY) bench/run.py $(BENCH_ARGS)

bench-short: install system-deps ## a quick benchmark, about 5 minutes (bench/out/, never RESULTS.md)
	$(PY) bench/run.py --short $(BENCH_ARGS)

# Not in CI: mixed load with the limits set low; fails on a wrong answer or RSS growth.
soak: install ## 10-minute mixed load with low limits (bench/soak/report.md); SOAK_ARGS="--duration 120"
	$(PY) bench/soak.py $(SOAK_ARGS)

# The peer benchmark (not in CI): TorchServe 0.12 in a virtualenv of its own, on Debian's Java 17.
# It holds seqpredict too (editable): the handler loads our checkpoint with it and the driver reuses
# bench/loadgen.py and the reference model. torch is pinned exactly, as above.
TS_VENV := bench/peers/.venv-torchserve
TS_STAMP := $(TS_VENV)/.installed
TS_STUBS := $(TS_VENV)/ts-grpc/inference_pb2.py
TS_PACKAGES := torch==2.13.0 'torchserve==0.12.*' 'torch-model-archiver==0.12.*' \
	pyyaml lru-dict grpcio grpcio-tools googleapis-common-protos

java-runtime: ## Debian's Java 17 runtime for TorchServe, when java is missing
	@if ! command -v java >/dev/null; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing from Debian: openjdk-17-jre-headless"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openjdk-17-jre-headless; \
	fi

$(TS_STAMP): pyproject.toml Makefile | $(STAMP)
	$(PYTHON) -m venv $(TS_VENV)
	$(TS_VENV)/bin/pip install --quiet --upgrade pip
	$(TS_VENV)/bin/pip install --quiet $(TS_PACKAGES) -e ./client -e .
	touch $@

# TorchServe's gRPC client code, generated from the proto inside its installed jar (never committed).
$(TS_STUBS): $(TS_STAMP) bench/peers/torchserve/stubs.py
	$(TS_VENV)/bin/python bench/peers/torchserve/stubs.py $(TS_VENV)/ts-grpc

bench-peers: install java-runtime $(TS_STUBS) ## ours against TorchServe 0.12, same load, same run (bench/PEERS.md)
	$(PY) bench/peers/run.py $(PEERS_ARGS)

bench-peers-short: install java-runtime $(TS_STUBS) ## a quick bench-peers
	$(PY) bench/peers/run.py --short $(PEERS_ARGS)

dist: install ## the two wheels into dist/: seqpredict-client (no torch) and seqpredict (the server)
	@rm -rf dist && mkdir -p dist
	$(PIP) wheel --no-deps --wheel-dir dist ./client .
	@ls -1 dist

# Everything the image build installs, for an air-gapped `docker build --build-arg TORCH_INDEX_URL=
# --build-arg INDEX_URL=`: torch as `make install` gets it (its CPU wheel; the check refuses any
# other), then the rest. TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu where no local wheel is.
IMAGE_WHEELS := deploy/image/wheels
docker-wheels: install ## download every wheel the image build needs into deploy/image/wheels (air-gapped builds)
	$(PIP) download --dest $(IMAGE_WHEELS) --no-deps torch==$(TORCH) $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	@ls $(IMAGE_WHEELS)/torch-$(TORCH)+cpu-*.whl >/dev/null 2>&1 || { echo "no CPU wheel of torch $(TORCH) in" \
		"$(IMAGE_WHEELS): give TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"; exit 1; }
	$(PIP) wheel --wheel-dir $(IMAGE_WHEELS) --find-links $(IMAGE_WHEELS) \
		./client . "grpcio-tools>=1.66,<2" "setuptools>=69" wheel
	@rm -f $(IMAGE_WHEELS)/seqpredict-*.whl $(IMAGE_WHEELS)/seqpredict_client-*.whl  # built from the source instead
	@ls $(IMAGE_WHEELS) | grep -v README | sed 's/^/  /'

clean: ## remove .venv, caches, generated code, dist/ and the Docker tests' cache
	rm -rf $(VENV) .pytest_cache .ruff_cache dist build client/build protos/seqpredict/v1/*_pb2*.py \
		protos/seqpredict/v1/*_pb2*.pyi


# The single human entry point. Every target bootstraps what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PROTO := protos/seqpredict/v1/seqpredict.proto
GEN := protos/seqpredict/v1/seqpredict_pb2.py
CHECKPOINT := models/seqpredict/models/shipped/shakespeare-lstm.pt
DATA := models/data/shakespeare
# glibc keeps large freed blocks instead of returning them to the OS every step: 1.6x faster training here.
TRAIN_ENV := MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824
TRAIN_FLAGS := --hidden-size 256 --num-layers 2 --embed-dim 64 --dropout 0.2 --batch-size 64 --seq-len 128 \
	--lr 2e-3 --max-steps 12000 --eval-every 500 --seed 1234

.PHONY: help install system-deps docker-deps gen run test test-fast test-docker lint format train eval bench bench-short soak clean

help:
	@echo "make run        start the server on the shipped checkpoint (127.0.0.1:50051, metrics :9095)"
	@echo "make test       lint + the whole test suite (not the Docker tests)"
	@echo "make test-docker build and run the image and the compose stack on a private Docker engine (5-7 min cold)"
	@echo "make train      train the default checkpoint from scratch (about an hour on 2 cores)"
	@echo "make eval       evaluate the shipped checkpoint on the validation plays"
	@echo "make bench      full benchmark (writes bench/RESULTS.md); make bench-short for a quick one"
	@echo "make soak       10-minute mixed load with low limits (bench/soak/report.md); SOAK_ARGS=\"--duration 120\""

$(BIN)/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned exactly: 2.13.0 is a local CPU wheel here; anything looser pulls a CUDA build.
# The client distribution first: the server's `seqpredict-client==…` is then this checkout's.
$(STAMP): pyproject.toml client/pyproject.toml | $(BIN)/pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ./client -e '.[dev]'
	touch $@

install: $(STAMP) $(GEN)

# Debian tools the tests use as real parts: promtool and prometheus (metrics and alert checks
# against a real Prometheus), docker-compose (validates docker-compose.yml; no engine needed).
SYSTEM_TOOLS := promtool:prometheus prometheus:prometheus docker-compose:docker-compose
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing from Debian:$$missing"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# And for `make test-docker`: a Docker engine of the tests' own, and mmdebstrap for a stand-in
# base image when Docker Hub cannot be reached.
DOCKER_TOOLS := dockerd:docker.io containerd:containerd runc:runc iptables:iptables mmdebstrap:mmdebstrap \
	$(SYSTEM_TOOLS)
docker-deps:
	@missing=""; for pair in $(DOCKER_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null || [ -x /usr/sbin/$${pair%%:*} ] || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing from Debian:$$missing"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(GEN): $(PROTO) $(STAMP)
	$(PY) protos/generate.py

gen: $(STAMP)
	$(PY) protos/generate.py

run: install
	$(BIN)/seqpredict-server

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint system-deps
	$(BIN)/pytest -q -m "not docker"

# -s: the Docker tests print their progress (engine, base image, build steps, figures) as they go.
test-docker: install docker-deps
	$(BIN)/pytest -s -rs -p no:cacheprovider -m docker tests/docker

test-fast: install
	$(BIN)/pytest -q -m "not slow and not docker"

train: install
	$(TRAIN_ENV) $(BIN)/seqpredict-train --train $(DATA)/shakespeare-train.txt --val $(DATA)/shakespeare-val.txt \
		--out $(CHECKPOINT) $(TRAIN_FLAGS)

eval: install
	$(BIN)/seqpredict-eval $(CHECKPOINT) --text $(DATA)/shakespeare-val.txt

bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

bench-short: install
	$(PY) bench/run.py --short $(BENCH_ARGS)

# Not in CI: mixed load with the limits set low; fails on a wrong answer or RSS growth.
soak: install
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build client/build protos/seqpredict/v1/*_pb2*.py protos/seqpredict/v1/*_pb2*.pyi

# `make serve` and `make test` set everything up from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PIP_CONSTRAINT reaches pip's isolated build environments too, so the build backend is pinned.
PIP := PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/pip install --quiet -c constraints.txt
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench proto clean

install: $(STAMP)

# torch first (it takes the local CPU wheel), then torchrec without its declared CUDA deps.
$(STAMP): constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch
	$(PIP) fbgemm-gpu-cpu
	$(PIP) --no-deps torchrec
	$(PIP) -e '.[dev]'
	touch $(STAMP)

serve: install
	$(BIN)/seqserve serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy serving handler

# tests/docker/test_scale.py runs the compose scale profile's load balancer, Debian's HAProxy,
# outside Docker: installed here when missing (as root, from the Debian archive).
HAPROXY := /usr/sbin/haproxy
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(HAPROXY):
	$(SUDO) apt-get install -y -qq haproxy >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq haproxy >/dev/null)

# tests/hosts/ runs the front and its workers on network namespaces and blocks ports between
# them with nftables (the kernel has it; the `nft` command is installed here when missing).
NFT := /usr/sbin/nft
$(NFT):
	$(SUDO) apt-get install -y -qq nftables >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nftables >/dev/null)

test: lint $(HAPROXY) $(NFT)
	$(BIN)/pytest -q

# The Open Inference Protocol's gRPC stubs, checked in beside serving/fronts/proto/*.proto.
proto: install
	$(BIN)/python serving/fronts/proto/generate.py

bench: install
	$(BIN)/python benchmarks/engine_bench.py

clean:
	rm -rf $(VENV) build *.egg-info

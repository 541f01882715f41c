# fleetsuit — the front door. Every target sets up .venv itself when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/fleetsuit/v1/*.proto)
PROTO_STAMP := fleetsuit/v1/.generated

.PHONY: install protos run test test-long lint fuzz bench clean prometheus lock image

install: $(STAMP) $(PROTO_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Generated code lives in fleetsuit/v1/ (git-ignored); never edit it by hand.
$(PROTO_STAMP): $(PROTO_SRC) $(STAMP)
	rm -rf fleetsuit/v1
	mkdir -p fleetsuit/v1
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)
	touch fleetsuit/v1/__init__.py $(PROTO_STAMP)

protos:
	rm -f $(PROTO_STAMP)
	$(MAKE) $(PROTO_STAMP)

# make run ARGS=--once: exit after the rollout (status 0 only if every device reached the release).
run: install
	$(PY) -m launcher.demo --nodes 3 --data data/run $(ARGS)

# The observability tests run a real Prometheus (Debian's package) against a
# local cluster: installed here the way `make bench` installs etcd.
test: install prometheus
	FLEETSUIT_REQUIRE_PROMETHEUS=1 $(PY) -m pytest -q

prometheus:
	command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# Thousands of simulation seeds (the Raft core's and the whole nodes') and the long fuzz run.
test-long: install
	FLEETSUIT_SIM_SEEDS=5000 FLEETSUIT_NODESIM_SEEDS=2000 $(PY) -m pytest -q tests

fuzz: install
	FLEETSUIT_FUZZ_EXAMPLES=200000 $(PY) -m pytest -q tests -k fuzz

# mypy --strict (pyproject) over everything we ship: the common package, the
# services, the SUIT library, the launcher and the device agent.
lint: install
	$(VENV)/bin/ruff check fleetsuit services suit launcher agent tests bench
	$(VENV)/bin/mypy fleetsuit services suit launcher agent

# The consensus bench runs a 3-member etcd beside fleetsuit: Debian's etcd-server,
# and the etcd API .proto files from golang-etcd-server-dev for an honest client.
bench: install
	command -v etcd >/dev/null && test -d /usr/share/gocode/src/go.etcd.io/etcd || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server golang-etcd-server-dev; }
	$(PY) -m bench

# The image's dependency lock (hashes for CPython 3.11 on x86_64 manylinux), from pyproject.toml.
lock: $(STAMP)
	$(PY) -m pip install --quiet uv==0.13.9
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 -o requirements.lock

# Needs a Docker engine (none on the CI machines).
image:
	docker build -f deploy/Dockerfile -t fleetsuit:$$($(PYTHON) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])') .

clean:
	rm -rf $(VENV) fleetsuit/v1 data .pytest_cache .hypothesis

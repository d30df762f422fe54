# One entry point for humans and CI. Everything runs as root (network namespaces, Docker, qemu).
PY := .venv/bin/python
STACK ?= dev
# This kind of host kernel has no ESP: `make lab` runs the router tunnels in clear (ENCRYPTION=ipsec where it has);
# the encrypted overlay runs in the kernel VM: .venv/bin/python -m lab vm --encryption ipsec.
ENCRYPTION ?= none

.PHONY: test setup lint unit lab lab-down graph

## test: install what is missing, then lint, type-check and run every test (unit, mocks, lab, VM)
test: setup lint
	$(PY) -m pytest

## setup: Debian packages and the pinned virtualenv (idempotent)
setup:
	bash scripts/setup.sh

lint:
	$(PY) -m ruff check .
	$(PY) -m pyright

## unit: the tests that need neither root nor namespaces
unit:
	$(PY) -m pytest -m "not root"

## lab: bring up the stack's overlay on this machine and print the connectivity matrix
lab: setup
	$(PY) -m lab up --stack $(STACK) --encryption $(ENCRYPTION)
	$(PY) -m lab check

## lab-down: remove everything the lab made
lab-down:
	$(PY) -m lab down

## graph: the README's topology picture of the dev stack: docs/topology.dot, .svg, .png (needs Graphviz's dot)
graph:
	$(PY) -m lab graph --stack dev --out docs

# One entry point for humans and CI. The lab and the tests need root (network namespaces, Docker, qemu), and so
# does installing Debian packages: run as a user, those targets run themselves again under sudo; run as root
# (where sudo may not be installed) they just run. deploy-setup, unit and graph need no root.
PY := .venv/bin/python
STACK ?= dev
# This kind of host kernel has no ESP: `make lab` runs the router tunnels in clear (ENCRYPTION=ipsec where it has);
# the encrypted overlay runs in the kernel VM: .venv/bin/python -m lab vm --encryption ipsec.
ENCRYPTION ?= none
ROOT_TARGETS := test test-boot setup lab lab-down

.PHONY: $(ROOT_TARGETS) deploy-setup lint unit graph

ifneq ($(shell id -u),0)
$(ROOT_TARGETS):
	sudo $(MAKE) $@ STACK=$(STACK) ENCRYPTION=$(ENCRYPTION)
else
## test: install what is missing, then lint, type-check and run every test (unit, mocks, lab, VM): those that need
## no root on every core, then the root ones one at a time (one lab at a time); fails if either part fails
test: setup lint
	$(PY) -m pytest -m "not root" -n auto; unit=$$?; $(PY) -m pytest -m "root and not boot"; root=$$?; exit $$(( unit || root ))

## test-boot: the stack's nodes booted as qemu VMs by the real cloud-init, systemd, sshd and Docker, pushed and
## checked over real SSH (lab.boot; about 20 minutes on 2 cores, not part of `make test`)
test-boot: setup
	$(PY) -m pytest -m boot -s

## setup: Debian packages and the pinned virtualenv (idempotent)
setup:
	bash scripts/setup.sh

## lab: bring up the stack's overlay on this machine and print the connectivity matrix
lab: setup
	$(PY) -m lab up --stack $(STACK) --encryption $(ENCRYPTION)
	$(PY) -m lab check

## lab-down: remove everything the lab made
lab-down:
	$(PY) -m lab down
endif

## deploy-setup: only what `pulumi up` needs (the pinned SDKs in .venv): no root, no Debian packages, no test tools
deploy-setup:
	python3 -m venv .venv
	.venv/bin/pip install -q -r requirements.txt

lint:
	$(PY) -m ruff check .
	$(PY) -m pyright

## unit: the tests that need neither root nor namespaces
unit:
	$(PY) -m pytest -m "not root" -n auto

## graph: the README's topology picture of the dev stack: docs/topology.dot, .svg, .png (needs Graphviz's dot)
graph:
	$(PY) -m lab graph --stack dev --out docs

# One entry point for humans and CI. The lab and the tests need root (network namespaces, Docker, qemu), and so
# does installing Debian packages: run as a user, those targets run themselves again under sudo; run as root
# (where sudo may not be installed) they just run. deploy-setup, unit and graph need no root.
PY := .venv/bin/python
STACK ?= dev
UNIT_LOG := lab-results/unit-tests.log
# This kind of host kernel has no ESP: `make lab` runs the router tunnels in clear (ENCRYPTION=ipsec where it has);
# the encrypted overlay runs in the kernel VM: .venv/bin/python -m lab vm --encryption ipsec.
ENCRYPTION ?= none
ROOT_TARGETS := test test-boot test-ipsec-vm setup lab lab-down

.PHONY: $(ROOT_TARGETS) deploy-setup lint unit graph

ifneq ($(shell id -u),0)
$(ROOT_TARGETS):
	sudo $(MAKE) $@ STACK=$(STACK) ENCRYPTION=$(ENCRYPTION)
else
## test: install what is missing, then lint, type-check and run every test: the root ones (labs and VMs) one at a
## time, and meanwhile those that need no root on every core at the lowest CPU priority (they take the time the labs
## leave idle, and yield the rest); then, once both are done, the stack's nodes booted as VMs; fails if any part fails.
## The low priority is its own session's: with autogroup scheduling (Linux's default), CPU time is shared between
## sessions first. The boot test waits for the rest: beside it, even at that priority, its emulated CPUs ran at half
## speed (the whole boot test 2,139 s instead of 1,288 s alone).
test: setup lint
	@mkdir -p lab-results; echo "tests that need no root: in the background at the lowest priority, log in $(UNIT_LOG)"
	setsid sh -c '{ echo 19 > /proc/self/autogroup; } 2>/dev/null; exec nice -n 19 "$$@"' sh \
	  $(PY) -m pytest -m "not root" -n auto --timeout 2700 > $(UNIT_LOG) 2>&1 & unit_pid=$$!; \
	trap 'kill -TERM -$$unit_pid 2>/dev/null' INT TERM; \
	$(PY) -m pytest -m "root and not boot and not ipsec_vm"; root=$$?; \
	echo "== waiting for the tests that need no root before the boot test"; \
	wait $$unit_pid; unit=$$?; \
	echo "== the tests that need no root ($(UNIT_LOG)):"; \
	if [ $$unit -eq 0 ]; then tail -n 20 $(UNIT_LOG); else cat $(UNIT_LOG); fi; \
	$(PY) -m pytest -m boot -s; boot=$$?; \
	exit $$(( unit || root || boot ))

## test-boot: only the stack's nodes booted as qemu VMs by the real cloud-init, systemd, sshd and Docker, pushed and
## checked over real SSH (lab.boot; part of `make test`)
test-boot: setup
	$(PY) -m pytest -m boot -s

## test-ipsec-vm: the IPsec lab inside a Debian-kernel VM (about 9 minutes; not part of `make test`: every proof it
## makes, make test-boot makes on the booted VMs)
test-ipsec-vm: setup
	$(PY) -m pytest -m ipsec_vm

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

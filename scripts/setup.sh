#!/usr/bin/env bash
# Install everything the tests and the lab need on a fresh Debian machine (idempotent; run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 iptables iputils-ping procps kmod util-linux   # node script and lab namespaces
  docker.io                                              # router containers in the lab
  qemu-system-x86 busybox-static cpio                    # GENEVE lab in a Debian-kernel VM
  cloud-init                                             # `cloud-init schema` validates every payload
  python3 tcpdump iperf3 ethtool                         # VM userland, captures, benchmarks (ethtool: bench.dataplane wire mode)
  conntrack                                              # counts what the node script leaves untracked (tests, bench.fastpath)
  openssh-server sudo                                    # tests/lab/test_push_sshd.py: a stock sshd and sudo take the push
  graphviz                                               # `dot`: make graph / lab graph draw the topology (docs/topology.svg)
  debootstrap qemu-utils e2fsprogs genisoimage dpkg-dev binutils xz-utils zstd openssh-client dnsmasq-base  # lab boot: node image (its repository recompressed), seeds, DHCP, SSH
  strongswan-charon strongswan-swanctl libstrongswan-standard-plugins  # encryption ipsec: the IKE daemon of each lab router
  frr                                                    # two hubs: FRR's bfdd and zebra, started per lab router, not as a service
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: needs root to install Debian packages (run: sudo make test)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -q
  # FRR's package would start its daemons in the host's own network namespace: the lab starts its own per router.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\ncase "$1" in frr) exit 101 ;; esac\nexit 0\n' > "$policy"
    chmod 755 "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ -n "$policy" ]; then rm -f "$policy"; trap - EXIT; fi
else
  echo "setup: Debian packages present"
fi

stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv with the pinned Python packages (about 90 s)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements-dev.txt
  echo "$want" > "$stamp"
else
  echo "setup: .venv up to date"
fi

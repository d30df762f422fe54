"""The node image for `lab boot`: a Debian 12 disk that boots like the Ubuntu cloud images the payloads target.

Built from Debian packages only, with lab.bootimage's builder (debootstrap, chroot fix-ups, `mkfs.ext4 -d`, every
step skipped when done, outputs named by a digest of the recipe), into its own cache (.cache/node):

- what an Ubuntu cloud image has: systemd, cloud-init (NoCloud among its datasources), openssh-server, netplan with
  systemd-networkd, sudo, python3, iproute2, iptables, AppArmor (Ubuntu enforces it; Docker needs apparmor_parser
  then, /work/shared/LAB-NOTES.md), the cloud kernel (GENEVE, ESP);
- no Docker: the payload's own `apt-get install` installs it at first boot, from a **local file repository** in the
  image (/opt/mco-repo, apt's only source), which holds exactly what that command downloads on this suite (the
  same package list, with Recommends, as the payload runs it), recompressed with zstd as Ubuntu's archive ships
  its packages (same members, same tar streams; Debian's are xz, slower to unpack). So cloud-init's package step
  really runs apt-get, offline;
- what the lab stands in for, and nothing else:
  - the container image: the lab's stacks name `mco-lab/busybox:latest` (lab.state.LAB_IMAGE, as the host lab
    does); with no registry to pull from, a drop-in makes docker.service import it from a tar in the image once
    dockerd is up (ExecStartPost: the overlay unit, ordered after docker.service, finds it);
  - a platform's image quirks, chosen per VM by `mco.platform=<platform>` on the kernel command line: on OCI the
    image's iptables rules (lab.topology.OCI_IMAGE_IPTABLES, loaded before the network comes up, at every boot,
    as netfilter-persistent does on OCI's Ubuntu images).

    python -m lab.nodeimage build     # or: lab boot builds it when missing
    python -m lab.nodeimage info
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from lab import bootimage
from lab.bootimage import SUITE, BootImage, Recipe, _chroot, _log, _run, debian_mirrors
from lab.privilege import become_root
from lab.state import LAB_IMAGE
from lab.topology import OCI_IMAGE_IPTABLES
from multicloud_overlay.cloudinit.render import APT_INSTALL_OPTIONS
from multicloud_overlay.cloudinit.render import PACKAGES as PAYLOAD_PACKAGES

CACHE: Final = bootimage.ROOT / ".cache" / "node"
RECIPE_VERSION: Final = 2
DISK_SIZE: Final = "3G"
REPO: Final = "/opt/mco-repo"
IMAGE_TAR: Final = "/var/lib/mco-lab/busybox-rootfs.tar"

# An Ubuntu cloud image's userland, as far as the payload touches it (the packages it installs itself are the
# repository's, below).
PACKAGES: Final = (
    "systemd-sysv", "udev", "dbus", "libpam-systemd", "systemd-resolved", "cloud-init", "cloud-guest-utils",
    "openssh-server", "iproute2", "netplan.io", "sudo", "iputils-ping", "linux-image-cloud-amd64", "initramfs-tools",
    "e2fsprogs", "ca-certificates", "procps", "python3-cffi-backend", "locales", "python3", "iptables", "kmod",
    "apparmor", "tcpdump", "less",
)  # fmt: skip


def _oci_rules() -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += ["-A " + " ".join(rule) for rule in OCI_IMAGE_IPTABLES]
    return "\n".join([*lines, "COMMIT", ""])


FIXUPS: Final = r"""
set -eu
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > /etc/fstab
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
echo ubuntu > /etc/hostname
sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >> /etc/locale.gen
locale-gen
update-locale LANG=en_US.UTF-8
systemctl enable systemd-networkd
# cloud images regenerate sshd's host keys per instance (cloud-init's ssh module): none in the image.
rm -f /etc/ssh/ssh_host_*
mkdir -p /var/lib/mco-lab /etc/iptables /etc/systemd/system/docker.service.d
cat > /usr/local/sbin/mco-lab-image <<'EOF'
#!/bin/sh
# lab stand-in for a registry: the stack's container image, imported once dockerd is up
docker image inspect IMAGE > /dev/null 2>&1 && exit 0
exec docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' TAR IMAGE
EOF
sed -i "s|IMAGE|@LAB_IMAGE@|g; s|TAR|@IMAGE_TAR@|" /usr/local/sbin/mco-lab-image
chmod 755 /usr/local/sbin/mco-lab-image
printf '[Service]\nExecStartPost=/usr/local/sbin/mco-lab-image\n' > /etc/systemd/system/docker.service.d/mco-lab-image.conf
cat > /etc/iptables/oci-image-rules.v4 <<'EOF'
@OCI_RULES@EOF
cat > /usr/local/sbin/mco-lab-platform <<'EOF'
#!/bin/sh
# lab stand-in for a platform image's own settings, chosen by mco.platform= on the kernel command line
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    mco.platform=oci) iptables-restore < /etc/iptables/oci-image-rules.v4 ;;
  esac
done
EOF
chmod 755 /usr/local/sbin/mco-lab-platform
cat > /etc/systemd/system/mco-lab-platform.service <<'EOF'
[Unit]
Description=lab: the platform image's own firewall (OCI), as netfilter-persistent loads it
DefaultDependencies=no
Before=network-pre.target cloud-init-local.service
Wants=network-pre.target
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/mco-lab-platform

[Install]
WantedBy=sysinit.target
EOF
systemctl enable mco-lab-platform.service
# e2scrub_reap checks LVM snapshots, which no node has: under an emulated CPU it took minutes of each first boot.
systemctl mask e2scrub_reap.service
# the lab's own way in (what a cloud's serial console is for): root, with a key made at build time, whatever the
# payload does to users; the payload's drop-in (HostKey) is not affected.
mkdir -p /etc/mco-lab
printf 'AuthorizedKeysFile .ssh/authorized_keys /etc/mco-lab/authorized_keys.%%u\n' > /etc/ssh/sshd_config.d/00-mco-lab-console.conf
"""

# Download (into apt's cache) exactly what the payload's install command installs on top of this image.
REPO_SCRIPT: Final = r"""
set -eu
cat > /etc/apt/sources.list <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
apt-get update -q
apt-get clean
apt-get install --download-only $OPTIONS $PAYLOAD
"""

FINISH_SCRIPT: Final = r"""
set -eu
echo "deb [trusted=yes] file:$REPO ./" > /etc/apt/sources.list
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
"""


# Ubuntu's archive builds its .debs with zstd since 21.10 (Debian's use xz):
# https://www.phoronix.com/news/Ubuntu-21.10-Zstd-Debs, at level 19
# (https://www.phoronix.com/scan.php?page=news_item&px=Ubuntu-Zstd-Deb-Packages). The lab compresses at zstd's default
# level instead: a first boot pays only for the unpacking, and zstd "decompression speed is preserved and remains
# roughly the same at all settings" (https://github.com/facebook/zstd#readme). The build prints this step's time:
# 85 s at level 19, 9 s at level 3 (2 cores).
ZSTD_LEVEL: Final = 3


def recompress_zstd(deb: Path) -> bool:
    """Rewrite `deb` with its xz members as zstd: the same members in the same order, each tar stream byte for byte
    (binutils' ar, xz and zstd). Returns whether anything was xz."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        members = _run(["ar", "t", str(deb.resolve())]).split()
        if not any(m.endswith(".xz") for m in members):
            return False
        _run(["ar", "x", str(deb.resolve())], cwd=tmp)
        out: list[str] = []
        for m in members:
            if m.endswith(".xz"):
                _run(["xz", "-d", m], cwd=tmp)
                _run(["zstd", "-q", f"-{ZSTD_LEVEL}", "-T0", "--rm", m[: -len(".xz")]], cwd=tmp)
                m = m[: -len(".xz")] + ".zst"
            out.append(m)
        new = work / deb.name
        _run(["ar", "rc", str(new), *out], cwd=tmp)
        shutil.move(str(new), deb)
    return True


def payload_packages() -> str:
    return " ".join(sorted({p for kind in PAYLOAD_PACKAGES.values() for p in kind}))


def fixups() -> str:
    return FIXUPS.replace("@LAB_IMAGE@", LAB_IMAGE).replace("@IMAGE_TAR@", IMAGE_TAR).replace("@OCI_RULES@", _oci_rules())


def recipe() -> Recipe:
    """The builder's recipe: fix-ups run as its fix-up step; the repository scripts and the payload's package list
    ride in the `venv` field (this image has no venv) so that they count in the digest."""
    mirror, security = debian_mirrors()
    repo = "\n".join((REPO_SCRIPT, FINISH_SCRIPT, payload_packages(), " ".join(APT_INSTALL_OPTIONS), REPO, f"zstd -{ZSTD_LEVEL}"))
    return Recipe(SUITE, mirror, security, PACKAGES, (), fixups(), repo, DISK_SIZE, RECIPE_VERSION)


def _steps(rootfs: Path, cache: Path, r: Recipe) -> list[tuple[str, Callable[[], None]]]:
    from lab.nodes import build_image_tar

    def lab_files() -> None:
        tar = build_image_tar(cache)
        dest = rootfs / IMAGE_TAR.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tar, dest)

    def repo() -> None:
        resolv = rootfs / "etc" / "resolv.conf"
        saved = resolv.readlink() if resolv.is_symlink() else None
        resolv.unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", resolv)
        try:
            _chroot(
                rootfs,
                REPO_SCRIPT,
                {"MIRROR": r.mirror, "SECURITY": r.security, "PAYLOAD": payload_packages(), "OPTIONS": " ".join(APT_INSTALL_OPTIONS)},
            )
        finally:
            resolv.unlink()
            if saved is not None:
                resolv.symlink_to(saved)
        target = rootfs / REPO.lstrip("/")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        debs = sorted((rootfs / "var/cache/apt/archives").glob("*.deb"))
        if not debs:
            raise RuntimeError("the payload's packages downloaded nothing: is everything already in the image?")
        for deb in debs:
            shutil.move(str(deb), target / deb.name)
            recompress_zstd(target / deb.name)
        packages = _run(["dpkg-scanpackages", "--multiversion", "."], cwd=str(target))
        (target / "Packages").write_text(packages)
        _chroot(rootfs, FINISH_SCRIPT, {"REPO": REPO})

    def console_key() -> None:
        key = cache / "console-key"
        if not key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mco-lab-console", "-f", str(key)])
        dest = rootfs / "etc/mco-lab/authorized_keys.root"
        dest.write_text(Path(f"{key}.pub").read_text())
        dest.chmod(0o644)

    return [("lab-files", lab_files), ("repo", repo), ("console-key", console_key)]


def build(out: bootimage.Out = _log) -> BootImage:
    """Build the node image (or find it in the cache)."""
    r = recipe()
    return bootimage.build(CACHE, out, keep_rootfs=False, r=r, steps_after=_steps)


def console_key() -> Path:
    """Private key of the lab's root access to the node VMs (made with the image)."""
    return CACHE / "console-key"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.nodeimage", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the node image (skipped when it is up to date)")
    sub.add_parser("info", help="the image's digest, paths and sizes")
    args = parser.parse_args(argv)
    if argv is None and args.cmd == "build":
        become_root("lab.nodeimage build", "debootstrap, chroot")
        bootimage._install_tools()
    try:
        if args.cmd == "build":
            img = build()
            state = f"built in {img.seconds:.0f} s" if img.built else "up to date"
            print(f"{img.disk} ({state}; {img.used_bytes / 1e6:.0f} MB allocated of {DISK_SIZE}); kernel {img.kernel_release}")
            return 0
        digest = recipe().digest()
        disk = CACHE / f"debian-{SUITE}-{digest}.img"
        if not disk.exists():
            print(f"not built (recipe digest {digest}): python -m lab.nodeimage build")
            return 1
        info = json.loads((CACHE / f"image-{digest}.json").read_text())
        print(
            f"{disk}: digest {digest}, kernel {info['kernel_release']}, {disk.stat().st_blocks * 512 / 1e6:.0f} MB allocated, built in {info['seconds']:.0f} s"
        )
        return 0
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"nodeimage: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

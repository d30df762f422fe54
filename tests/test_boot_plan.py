"""lab.boot's pure part: which VMs a stack boots, with which NICs, addresses, management path and seed bytes."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from lab import boot
from lab.state import lab_plan, load_raw
from lab.topology import build_layout
from multicloud_overlay.components.limits import node_user_data
from multicloud_overlay.overlay.plan import Plan


def _plan_and_specs() -> tuple[Plan, dict[str, boot.VmSpec]]:
    plan = lab_plan(load_raw("dev", list(boot.DEFAULT_SITES), {}))
    return plan, {v.node: v for v in boot.vm_specs(plan, build_layout(plan, boot.PREFIX))}


def test_every_node_is_one_vm_with_its_platform_nics_and_unique_macs() -> None:
    _, specs = _plan_and_specs()
    assert set(specs) == {f"{s}-{k}" for s in boot.DEFAULT_SITES for k in ("router", "client")}
    assert [n.name for n in specs["aws-router"].nics] == ["eth0", "eth1"]
    assert [n.segment for n in specs["vsphere-client"].nics] == ["br-mgmt", "br-lan"]
    macs = [n.mac for v in specs.values() for n in v.nics]
    assert len(macs) == len(set(macs))
    taps = {(v.edge_ns, n.tap) for v in specs.values() for n in v.nics}
    assert len(taps) == len(macs) and all(len(t) <= 15 for _, t in taps)


def test_management_goes_where_the_program_connects() -> None:
    """Routers: their public address (vSphere: the WAN address); clients: a public address (vSphere: management)."""
    _, specs = _plan_and_specs()
    assert specs["aws-router"].management_ip == specs["aws-router"].public_ip
    assert specs["vsphere-router"].management_ip == "10.6.1.10"
    assert specs["vsphere-client"].management_ip == "10.6.3.20" and specs["vsphere-client"].public_ip is None
    assert specs["aws-client"].management_ip.startswith("203.0.113.")


def test_network_config_gives_only_the_platform_addresses_and_one_default_route() -> None:
    _, specs = _plan_and_specs()
    aws = yaml.safe_load(boot.network_config(specs["aws-router"]))
    # The LAN NIC of an AWS router is attached after launch and the payload's to configure: not in the config.
    assert aws["ethernets"] == {"eth0": {"match": {"macaddress": "52:54:00:01:00:00"}, "set-name": "eth0", "dhcp4": True}}
    assert [n.hot for n in specs["aws-router"].nics] == [False, True]
    assert not any(n.hot for v in specs.values() if v.platform == "vsphere" or v.kind == "client" for n in v.nics)
    vs = yaml.safe_load(boot.network_config(specs["vsphere-client"]))
    assert vs["ethernets"]["mgmt0"]["routes"] == [{"to": "default", "via": "10.6.3.1"}]
    assert "routes" not in vs["ethernets"]["lan0"] and vs["ethernets"]["lan0"]["addresses"] == ["10.6.2.20/24"]


def test_the_seed_holds_the_bytes_the_platform_receives() -> None:
    plan, _ = _plan_and_specs()
    text = node_user_data(plan, "aws-router", plan.config.ssh_public_key, "priv", "pub", "deploy")
    sent = boot.seed_user_data(plan, "aws-router", "priv", "pub", "deploy")
    assert sent[:2] == b"\x1f\x8b" and gzip.decompress(sent).decode() == text
    vs = boot.seed_user_data(plan, "vsphere-router", "priv", "pub", "deploy")
    assert vs.startswith(b"#cloud-config\n")


def test_dhcp_answers_each_public_cloud_nic_with_its_address_and_vsphere_has_none() -> None:
    _, specs = _plan_and_specs()
    argv = boot.dhcp_argv("mcb-aws-edge", "aws", list(specs.values()), {"br-wan": "10.1.1.1/24", "br-lan": "10.1.2.1/24"})
    assert argv is not None
    hosts = sorted(a for a in argv if a.startswith("--dhcp-host="))
    assert hosts == ["--dhcp-host=52:54:00:01:00:00,10.1.1.10", "--dhcp-host=52:54:00:01:01:00,10.1.2.20"]
    assert "--dhcp-option=tag:wan,option:router,10.1.1.1" in argv and "--dhcp-option=tag:lan,option:router,10.1.2.1" in argv
    assert any(a.startswith("--dhcp-range=set:wan,10.1.1.0,static,255.255.255.0") for a in argv)
    assert boot.dhcp_argv("mcb-vsphere-edge", "vsphere", list(specs.values()), {"br-wan": "10.6.1.1/24", "br-lan": "10.6.2.1/24"}) is None


def test_the_node_images_repository_holds_the_same_packages_recompressed_with_zstd(tmp_path: Path) -> None:
    """lab.nodeimage rewrites each xz .deb of its local repository with zstd, as Ubuntu's archive ships them: the
    result is a .deb that dpkg reads, with the same control data and the same tar stream byte for byte."""
    from lab import nodeimage

    for tool in ("ar", "xz", "zstd", "dpkg-deb"):
        assert shutil.which(tool), f"{tool} is missing: scripts/setup.sh installs it"
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: mco-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: lab <lab@example.invalid>\nDescription: probe\n"
    )
    (pkg / "usr/share/mco-probe").mkdir(parents=True)
    (pkg / "usr/share/mco-probe/data").write_bytes(os.urandom(200_000) + b"x" * 300_000)
    deb = tmp_path / "mco-probe_1.0_all.deb"
    subprocess.run(["dpkg-deb", "-Zxz", "--root-owner-group", "-b", str(pkg), str(deb)], check=True, capture_output=True)

    def members() -> list[str]:
        return subprocess.run(["ar", "t", str(deb)], check=True, capture_output=True, text=True).stdout.split()

    def tar() -> bytes:
        return subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout

    def info() -> str:
        return subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout

    assert members() == ["debian-binary", "control.tar.xz", "data.tar.xz"]
    before_tar, before_info = tar(), info()
    assert nodeimage.recompress_zstd(deb) is True
    assert members() == ["debian-binary", "control.tar.zst", "data.tar.zst"]
    assert tar() == before_tar and info() == before_info
    assert nodeimage.recompress_zstd(deb) is False  # nothing left in xz: a re-run changes nothing
    assert members() == ["debian-binary", "control.tar.zst", "data.tar.zst"]

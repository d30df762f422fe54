"""vSphere: the documented limits components/clouds/vsphere.py relies on (pure: imports only components.limits).

Each value carries the page (or provider/SDK source) that states it. Review: docs/platform-review/vsphere.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from multicloud_overlay.overlay.traits import Documented, NicNames, NodeDefaults, PlatformLimits, PlatformTraits, fullmatch

if TYPE_CHECKING:
    from multicloud_overlay.overlay.plan import Plan
    from multicloud_overlay.overlay.rules import SiteRules

_VMWARE_DS = "https://github.com/canonical/cloud-init/blob/main/cloudinit/sources/DataSourceVMware.py"
_NO_FIREWALL = (
    "https://www.pulumi.com/registry/packages/vsphere/api-docs/ (the vSphere provider has port groups but no "
    "firewall or security-group resource; distributed firewalls are NSX's, a separate product): the module creates "
    "none on vSphere (VsphereSecurityPolicy only exports the rules the datacentre edge must implement); the field does not apply"
)
_CONFIG_MAX = "https://configmax.broadcom.com (vSphere Configuration Maximums: 10 virtual NICs per VM)"

# ---------------------------------------------------------------------------------------------------------------
# Documented numbers and the pure functions components/clouds/vsphere.py builds its VMs with.

GUESTINFO_MAX_BYTES: Final = Documented(
    64 * 1024,
    "https://github.com/vmware-tanzu/vm-operator/issues/148 ('The maximum size of any guestinfo value is 64KiB', "
    "citing open-vm-tools lib/include/guest_msg_def.h GUESTMSG_MAX_IN_SIZE); the whole .vmx is limited to 1 MiB "
    "by default (tools.setInfo.sizeLimit). UNCONFIRMED for values the guest reads: the 64 KiB constant bounds "
    "guest-to-host messages.",
)
VM_NAME_MAX: Final = Documented(
    80,
    "VMware KB 2051649 (virtual machine names up to 80 characters since vCenter 5.0; 'fewer if the characters %, "
    "\\ or / are used'), quoted at https://eis-vss.atlassian.net/wiki/spaces/VSSPublic/pages/700088471 and "
    "https://fourteenfold73.rssing.com/chan-13575581/article59.html ('The name is too long. Up to 80 characters may be used')",
)
NICS_PER_VM_MAX: Final = Documented(10, _CONFIG_MAX)
MEMORY_MULTIPLE_MIB: Final = Documented(
    4,
    "https://github.com/libvirt/libvirt/blob/master/src/esx/esx_driver.c (esxDomainSetMaxMemory: 'max-memory must be "
    "a multiple of 4096 kilobyte', sent as VirtualMachineConfigSpec.memoryMB); vSphere Web Services API "
    "https://developer.broadcom.com/xapis/vsphere-web-services-api/latest/vim.vm.ConfigSpec.html (memoryMB)",
)
TEMPLATE_DATASOURCE: Final = Documented(
    "A template with vApp options (OVF environment transports, as an Ubuntu cloud OVA deployed to vCenter has) makes "
    "cloud-init's OVF datasource, listed before VMware in Ubuntu's datasource_list, find an OVF environment and win: "
    "guestinfo.userdata/metadata are then ignored.",
    "https://github.com/canonical/cloud-init/pull/5912 ('fix: move DS VMware to be in front of DS OVF', Fixes GH-4030) ; "
    "https://github.com/canonical/cloud-init/issues/3299 ; https://github.com/josenk/terraform-provider-esxi/issues/76",
)

SIZE_FORMAT: Final = "<vCPUs>x<memory MiB>, e.g. 2x4096"
DEFAULT_SIZES: Final[Mapping[str, str]] = {"router": "2x4096", "client": "1x2048"}
# Resolvers written to the guest's netplan when the site sets no dnsServers (packages are installed at boot).
DEFAULT_DNS: Final[tuple[str, ...]] = ("1.1.1.1", "9.9.9.9")
DNS_FORMAT: Final = "IPv4 or IPv6 addresses, as a YAML list or one string separated by commas or spaces, e.g. 10.6.3.53,10.6.3.54"
# This module's own bounds (a router or client VM needs neither more than 64 vCPUs nor more than 256 GiB).
MAX_CPUS: Final = 64
MIN_MEMORY_MIB: Final = 1024
MAX_MEMORY_MIB: Final = 262_144


def parse_size(value: str, key: str = "size") -> tuple[int, int]:
    """`<vCPUs>x<memory MiB>` (e.g. "2x4096") -> (2, 4096); memory a multiple of 4 MiB, as vSphere requires."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
    if not match:
        raise ValueError(f"{key} = {value!r}: use {SIZE_FORMAT}")
    cpus, memory = int(match.group(1)), int(match.group(2))
    if not 1 <= cpus <= MAX_CPUS:
        raise ValueError(f"{key} = {value!r}: vCPUs must be 1..{MAX_CPUS}")
    if not MIN_MEMORY_MIB <= memory <= MAX_MEMORY_MIB or memory % MEMORY_MULTIPLE_MIB.value:
        raise ValueError(
            f"{key} = {value!r}: memory must be {MIN_MEMORY_MIB}..{MAX_MEMORY_MIB} MiB and a multiple of "
            f"{MEMORY_MULTIPLE_MIB.value} ({MEMORY_MULTIPLE_MIB.source})"
        )
    return cpus, memory


def vm_name(project: str, stack: str, node: str) -> str:
    """The VM's inventory name: `<project>-<stack>-<node>`, or, when that is over vCenter's 80 characters, the
    project-stack part cut short and followed by 8 hex digits of its digest (unique per project and stack, stable)."""
    full = f"{project}-{stack}-{node}"
    if len(full) <= VM_NAME_MAX.value:
        return full
    digest = hashlib.sha256(f"{project}/{stack}".encode()).hexdigest()[:8]
    room = VM_NAME_MAX.value - len(node) - len(digest) - 2
    prefix = f"{project}-{stack}"[: max(room, 0)].rstrip("-_.")
    return f"{prefix}-{digest}-{node}" if prefix else f"{digest}-{node}"[: VM_NAME_MAX.value]


def guestinfo_problem(key: str, encoded: str) -> str | None:
    """The refusal of a guestinfo value of this size, or None when it fits."""
    if len(encoded) <= GUESTINFO_MAX_BYTES.value:
        return None
    return (
        f"{key} is {len(encoded):,} bytes (base64), over the {GUESTINFO_MAX_BYTES.value:,} a guestinfo value may hold "
        f"({GUESTINFO_MAX_BYTES.source}): lower containersPerRouter"
    )


def template_problem(template: str, vapp_transports: Sequence[str] | None) -> str | None:
    """The refusal of a template whose vApp options would hide guestinfo from cloud-init, or None."""
    if not vapp_transports:
        return None
    return (
        f"template {template!r} has vApp options enabled (OVF environment transports {list(vapp_transports)}): "
        f"{TEMPLATE_DATASOURCE.value} ({TEMPLATE_DATASOURCE.source}). Disable the template's vApp options (vSphere "
        "Client: template > Configure > vApp Options > Edit > uncheck 'Enable vApp options'), or convert a VM whose "
        "cloud-init has datasource_list: [ VMware, None ] (/etc/cloud/cloud.cfg.d/99-datasource.cfg) into the template "
        "and remove its vApp options"
    )


# Pulumi project and stack names: at most 100 characters each (the longest a vm_name has to fold).
_LONGEST_PROJECT = "p" * 100
_LONGEST_STACK = "s" * 100


def site_checks(plan: Plan, site: str, site_rules: SiteRules) -> list[str]:
    """What a vSphere site of this stack would break, as components/clouds/vsphere.py builds it (pure)."""
    where = f"vsphere site `{site}`"
    cfg = plan.config.site(site)
    problems: list[str] = []
    for kind, default in DEFAULT_SIZES.items():
        key = f"{kind}Size"
        try:
            parse_size(cfg.setting(key) or default, f"sites.{site}.{key}")
        except ValueError as error:
            problems.append(f"{where}: {error}")
    pattern = LIMITS.resource_name_pattern
    assert pattern is not None
    for node in (plan.router(site).name, plan.client(site).name):
        longest = vm_name(_LONGEST_PROJECT, _LONGEST_STACK, node)
        if not fullmatch(pattern, longest) or not longest.endswith(node):
            problems.append(
                f"{where}: the VM name of {node} cannot be made to fit vCenter's {VM_NAME_MAX.value} characters "
                f"({VM_NAME_MAX.source}): use a shorter site name"
            )
    return problems


LIMITS = PlatformLimits(
    platform="vsphere",
    # guestinfo.userdata = base64(#cloud-config), guestinfo.userdata.encoding = "base64" (vsphere.guestinfo_extra_config).
    user_data_encoding="base64",
    user_data_max_bytes=GUESTINFO_MAX_BYTES,
    # The limit is on the guestinfo value, i.e. the base64 text stored in extra_config.
    user_data_measure="encoded",
    ingress_rules_per_group=Documented(2**31 - 1, _NO_FIREWALL),
    groups_per_nic=Documented(1, _NO_FIREWALL),
    # VM names: up to 80 characters; '%', '\\' and '/' are escaped by vCenter and count more (avoid them).
    resource_name_pattern=Documented(
        r"[^%\\/]{1,80}",
        "VMware KB 2051649 (virtual machine names up to 80 characters since vCenter 5.0; 'fewer if the characters %, "
        "\\ or / are used'), quoted at https://eis-vss.atlassian.net/wiki/spaces/VSSPublic/pages/700088471 and "
        "https://fourteenfold73.rssing.com/chan-13575581/article59.html",
    ),
    max_nics={
        # Per VM, whatever its size: the default router (2x4096) and client (1x2048) sizes alike.
        size: NICS_PER_VM_MAX
        for size in DEFAULT_SIZES.values()
    },
    login_key_types=Documented(
        ("ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-ed25519"),
        f"{_VMWARE_DS}: get_public_ssh_keys returns metadata public-keys verbatim to cloud-init (authorized_keys), so "
        "any key type OpenSSH on Ubuntu 24.04 accepts works",
    ),
    notes={
        "guestinfo_encodings": Documented(
            "guestinfo.<key>.encoding: 'base64'/'b64' or 'gzip+base64'/'gz+b64', anything else is plain text; keys read "
            "with vmware-rpctool / vmtoolsd 'info-get guestinfo.<key>' (open-vm-tools needed in the template).",
            _VMWARE_DS,
        ),
        "vmware_datasource": Documented(
            "The VMware datasource (guestinfo transport) is part of cloud-init since 21.3 (merged from "
            "vmware/cloud-init-vmware-guestinfo, canonical/cloud-init PR 953); Ubuntu 24.04 ships cloud-init 24.1 or "
            "later. Ubuntu's datasource_list (/etc/cloud/cloud.cfg.d/90_dpkg.cfg) lists OVF before VMware; upstream "
            "moved VMware in front of OVF only in December 2024 (canonical/cloud-init PR 5912, Ubuntu PR 5950): a "
            "template with vApp options (guestinfo.ovfEnv / OVF ISO) can make the OVF datasource win and "
            "guestinfo.userdata/metadata be ignored.",
            "https://github.com/canonical/cloud-init/pull/5912 ; https://github.com/canonical/cloud-init/pull/5950 ; "
            "https://github.com/vmware-archive/cloud-init-vmware-guestinfo/pull/57",
        ),
        "redact": Documented(
            "metadata key 'redact' (or legacy 'cleanup-guestinfo'): the datasource sets each listed guestinfo.<key> to "
            "'---' and its .encoding to ' ' after reading them, from inside the guest (info-set). Whether the VMX keeps "
            "the original value across a power cycle: UNCONFIRMED.",
            _VMWARE_DS,
        ),
        "static_mac": Documented(
            "Manually assigned MACs with VMware's OUI must lie in 00:50:56:00:00:00-00:50:56:3F:FF:FF (above 3F is "
            "vCenter-generated / VMkernel).",
            "https://docs.vmware.com/en/VMware-vSphere/7.0/com.vmware.vsphere.networking.doc/"
            "GUID-ADFECCE5-19E7-4A81-B706-171E279ACBCD.html",
        ),
        "login_user": Documented(
            "Ubuntu cloud images: default user 'ubuntu' (locked password), SSH keys only from the datasource "
            "(metadata public-keys) or user-data; no key at all otherwise. With a 'users:' list that omits 'default', "
            "metadata public-keys go to root behind a 'login as ... rather than root' prefix.",
            "https://github.com/canonical/cloud-init/blob/main/cloudinit/config/cc_ssh.py",
        ),
        "extra_config_reboot": Documented(
            "A change of extra_config reboots the VM unless extra_config_reboot_required=false (default true); the "
            "module ignores extraConfig and clone changes, and the template-derived guestId, scsiType and firmware "
            "(a new template must not touch running VMs).",
            "pulumi-vsphere 4.18 VirtualMachine.extra_config_reboot_required docstring (https://www.pulumi.com/registry/packages/vsphere/api-docs/virtualmachine/)",
        ),
        "guest_net_waiter": Documented(
            "wait_for_guest_net_timeout (minutes, <1 disables) waits for an address reported by VMware Tools; with "
            "wait_for_guest_net_routable=true (default) the address must be on the network of a default gateway, which "
            "wan0 (router) and mgmt0 (client) have; the LAN NICs have none and need not.",
            "pulumi-vsphere 4.18 VirtualMachine.wait_for_guest_net_timeout / wait_for_guest_net_routable docstrings (https://www.pulumi.com/registry/packages/vsphere/api-docs/virtualmachine/)",
        ),
    },
    site_checks=site_checks,
)


NODES: Final = NodeDefaults(
    router_size=DEFAULT_SIZES["router"],
    client_size=DEFAULT_SIZES["client"],
    size_format=f"{SIZE_FORMAT} (memory a multiple of 4 MiB; checked before any resource)",
    image="not used: every VM is a clone of the site's `template` (cloud-init with the VMware datasource)",
    image_format="not used (set `template`)",
    source="https://registry.terraform.io/providers/vmware/vsphere/latest/docs/resources/virtual_machine (num_cpus, memory, clone)",
)

TRAITS: Final = PlatformTraits(
    name="vsphere",
    site_module="multicloud_overlay.components.clouds.vsphere",
    required_site_keys=("publicIp", "datacenter", "cluster", "datastore", "template", "wanNetwork", "lanNetwork", "mgmtNetwork", "mgmtCidr"),
    default_underlay_mtu=Documented(1500, "https://techdocs.broadcom.com/us/en/vmware-cis/vsphere/vsphere/8-0/vsphere-networking-8-0.html (standard switch MTU, default 1500)"),
    limits=LIMITS,
    example_site={"datacenter": "dc1", "cluster": "cluster1", "datastore": "datastore1", "template": "ubuntu-24.04-server-cloudimg",
                  "wanNetwork": "wan", "lanNetwork": "overlay-lan", "mgmtNetwork": "mgmt"},
    nodes=NODES,
    management_network=True,
    # The guest names its NICs from the guestinfo metadata (vsphere.py static_nics).
    nic_names=NicNames(router=("wan0", "lan0"), client=("mgmt0", "lan0")),
)  # fmt: skip

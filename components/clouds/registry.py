"""Every platform, one line each: its traits record (pure, cheap to import). Its Pulumi module is imported only when
a stack uses it (`PlatformTraits.site_module`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from multicloud_overlay.components.clouds import alicloud_traits, aws_traits, azure_traits, gcp_traits, oci_traits, vsphere_traits
from multicloud_overlay.overlay.traits import PlatformTraits

PLATFORMS: Final[Mapping[str, PlatformTraits]] = {
    "aws": aws_traits.TRAITS,
    "azure": azure_traits.TRAITS,
    "gcp": gcp_traits.TRAITS,
    "oci": oci_traits.TRAITS,
    "alicloud": alicloud_traits.TRAITS,
    "vsphere": vsphere_traits.TRAITS,
}

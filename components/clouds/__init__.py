"""Platform registry: one explicit line per platform, each imported only when a stack uses it (importing a
provider SDK costs a second or more)."""

from __future__ import annotations

from collections.abc import Callable

from components.clouds.base import PlatformSite, SiteContext
from components.config import Platform

PlatformFactory = Callable[[SiteContext], PlatformSite]


def _aws() -> PlatformFactory:
    from components.clouds import aws

    return aws.AwsSite


def _azure() -> PlatformFactory:
    from components.clouds import azure

    return azure.AzureSite


def _gcp() -> PlatformFactory:
    from components.clouds import gcp

    return gcp.GcpSite


def _oci() -> PlatformFactory:
    from components.clouds import oci

    return oci.OciSite


def _alicloud() -> PlatformFactory:
    from components.clouds import alicloud

    return alicloud.AlicloudSite


def _vsphere() -> PlatformFactory:
    from components.clouds import vsphere

    return vsphere.VsphereSite


REGISTRY: dict[Platform, Callable[[], PlatformFactory]] = {
    "aws": _aws,
    "azure": _azure,
    "gcp": _gcp,
    "oci": _oci,
    "alicloud": _alicloud,
    "vsphere": _vsphere,
}


def platform_site(ctx: SiteContext) -> PlatformSite:
    return REGISTRY[ctx.site.platform]()(ctx)

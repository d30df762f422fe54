"""Per-platform mock answers, one module per platform (explicit list, like the platform registry)."""

from tests.mockdata import alicloud, aws, azure, gcp, oci, vsphere

PLATFORMS = (aws, azure, gcp, oci, alicloud, vsphere)

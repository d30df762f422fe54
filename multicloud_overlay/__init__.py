"""multicloud-overlay's building blocks, installable on their own (`pip install .`).

- `multicloud_overlay.overlay`: the pure core: stack configuration -> plan -> security rules. No Pulumi, no
  cloud SDK, no I/O.
- `multicloud_overlay.cloudinit`: the payload: cloud-init user-data, the node script, push and check commands.
- `multicloud_overlay.components`: Pulumi ComponentResources: a site and its nodes, and per platform its network,
  security policy, public address and multi-NIC VM (`components.clouds.<platform>`).

In the repository these are the top-level folders `overlay/`, `cloudinit/` and `components/` (namespace
packages, so the repository on `sys.path` shadows no other package, cloud-init's own `cloudinit` above all); this
package reaches them through symbolic links.
"""

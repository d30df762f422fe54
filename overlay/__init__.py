"""The pure core: stack configuration -> plan -> security rules. No Pulumi, no cloud SDK, no I/O."""

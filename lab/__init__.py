"""Local lab: the stack's overlay on one machine, nodes built from their cloud-init payloads (python -m lab)."""

"""The sidecar's HTTP front ends, one module per building block."""

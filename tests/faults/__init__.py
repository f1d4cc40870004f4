"""Fault injection suite: power loss, log damage, I/O errors, process kills; figures go to docs/reliability.md."""

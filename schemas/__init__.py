"""Contracts shared by the ingress and the workers: envelope wire format, call record,
sources, topology and provider adapters. Nothing in this package does I/O."""

"""Adapters: what is in the watched directory, whether it may be served, and which version is live."""

from server.registry.records import AdapterState, AdapterVersion
from server.registry.registry import AdapterRegistry, Lease

__all__ = ["AdapterRegistry", "AdapterState", "AdapterVersion", "Lease"]

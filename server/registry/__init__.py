"""Adapters: what is in the watched directory, whether it may be served, and which version is live."""

from .records import AdapterState, AdapterVersion
from .registry import AdapterRegistry, Lease

__all__ = ["AdapterRegistry", "AdapterState", "AdapterVersion", "Lease"]

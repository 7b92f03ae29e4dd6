"""Many tenants on one gateway: API keys scoped to their models, their limits, usage and the audit log."""

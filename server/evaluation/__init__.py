"""Know whether an adapter is good: ``lora-gateway eval`` (test sets, scores, latency, reports)."""

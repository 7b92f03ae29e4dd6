"""HTTP layer: OpenAI protocol models, thin routes, auth, limits and the one error renderer."""

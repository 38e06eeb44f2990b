"""The teacher: OpenAI-compatible endpoints, the request cache, the ledger, vLLM sampling."""

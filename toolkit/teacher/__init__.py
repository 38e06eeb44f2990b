"""The teacher: OpenAI-compatible endpoints, the llama.cpp server we start, its binaries, the request cache, vLLM sampling."""

"""Loading models (HF folders, GGUF files, hub ids, packaged models) and starting local model servers."""

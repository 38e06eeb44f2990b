"""Export: HF checkpoints and GGUFs → ONNX (optimum), onnxruntime-genai and GGUF, with parity checks (toolkit.export)."""

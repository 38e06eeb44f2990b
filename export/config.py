"""ExportConfig: how `toolkit export` builds and checks an export; its fields are the command's flags."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from toolkit.core.flags import Flag
from toolkit.export.genai import HEAD_BITS

FORMATS = ("onnx", "genai", "gguf")


class ExportConfig(BaseModel):
    """The format, quantization and parity checks of one export (the model and the output folder are given
    beside it: a recipe that exports its student reuses this as it is)."""

    # Unknown keys are errors, as in the recipe: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")

    format: Literal[FORMATS] = Field(
        description="runtime of the files: onnx (optimum/onnxruntime), genai (onnxruntime-genai) or gguf (llama.cpp)")
    quant: str = Field(
        description="onnx: fp32|int8|int4; genai: int4|fp32; gguf: f16|f32|q8_0|q4_k_m|q4_0|… (llama.cpp types)")
    check: bool = Field(False, description="exit non-zero when parity is below the thresholds")
    bundle: bool = Field(False, description="also write a .tar.gz with a runtime-only runner (gguf, genai)")
    threads: int | None = Field(None, description="CPU threads (default: all cores, at most 8)")
    max_new_tokens: int = Field(16, description="greedy tokens compared per sample prompt")
    block_size: int = Field(32, description="int4 block size (onnx, genai)")
    int4_head_bits: Literal[HEAD_BITS] | None = Field(
        None, description="int4 (genai, onnx): bits of the LM head, and in genai of a tied embedding sharing it "
                          "(default 8; 4 is smaller and faster, less faithful)")
    min_first_token_match: float | None = Field(
        None, description="share of prompts whose first greedy token must match (default 1.0 unquantized, 0 else)")
    min_token_agreement: float | None = Field(
        None, description="mean matched share of the source's greedy tokens (default 0.5 quantized, 0 else)")
    eval_suite: Annotated[str | None, Flag(metavar="SUITE")] = Field(
        None, description="also score source and export on this math suite and record the accuracy delta")
    eval_limit: int = Field(20, description="problems of --eval-suite (its first N)")
    data_root: str | None = Field(None, description="folder holding the suites (default: $TOOLKIT_DATA or ./data)")
    max_accuracy_drop: Annotated[float | None, Flag(metavar="POINTS")] = Field(
        None, description="largest strict-accuracy drop, in points, that --check accepts (default 10)")
    tokenizer_gguf: str | None = Field(
        None, description="GGUF (or pkg:NAME) whose tokenizer metadata a gguf export carries over "
                          "(default: recorded base)")

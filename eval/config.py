"""EvalConfig and BenchConfig: how `toolkit eval` and `toolkit bench` run; their fields are the commands' flags."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from toolkit.core.flags import Flag, thread_sweep
from toolkit.data.suites import EVAL_SUITES
from toolkit.eval.generate import BACKENDS
from toolkit.eval.prompts import BUILDERS


class EvalConfig(BaseModel):
    """The suites, prompting and backend of one accuracy run (the model and the results path are given beside it)."""

    # Unknown keys are errors, as in the recipe: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")

    suite: str = Field("gsm8k", description=f"comma-separated: {','.join(EVAL_SUITES)}")
    limit: int | None = Field(None, description="first N problems of each suite")
    backend: Literal[BACKENDS] = Field(
        "auto", description="auto: llama.cpp for .gguf, genai for a folder with genai_config.json, onnx for a "
                            "folder with *.onnx, openai for openai:URL#MODEL, torch otherwise; llama.cpp-server "
                            "serves a GGUF on 127.0.0.1 for the run")
    strategy: Literal[tuple(sorted(BUILDERS))] = Field(
        "cot", description="cot: plain chain of thought; auto: a multi-strategy student picks its tag; "
                           "l2m|pot: that tag forced")
    fewshot: Annotated[int, Flag(metavar="N")] = Field(
        0, description="N worked examples before each question, drawn deterministically from the suite's train "
                       "split (GSM8K) or a fixed set, never from the evaluated problems")
    seed: int = Field(1234, description="seed of the few-shot draw and of any sampling")
    max_new_tokens: int = Field(256, description="most tokens generated per answer (greedy)")
    calculator: bool = Field(
        False, description="compute the arithmetic the model writes before '=' and force the result's tokens "
                           "(every local backend and llama.cpp-server; not a remote openai endpoint)")
    batch_size: int = Field(16, description="prompts per batch (torch, onnx, genai)")
    concurrency: int = Field(4, description="requests in flight (openai)")
    api_key_env: Annotated[str, Flag(metavar="VAR")] = Field(
        "OPENAI_API_KEY", description="environment variable holding the endpoint's API key (openai); the key is "
                                      "never written")
    threads: int | None = Field(None, description="CPU threads (default: the cores this process may use)")
    data_root: str | None = Field(None, description="folder holding the suites (default: $TOOLKIT_DATA or ./data)")
    tokenizer: Annotated[str | None, Flag(metavar="MODEL")] = Field(
        None, description="openai only: the served model's folder or GGUF; each prompt is rendered with its tokenizer "
                          "as it was trained (chat template, or the plain format of a model without one; its "
                          "prompt.json's strategies) and sent to the completions endpoint, not the chat one")


class BenchConfig(BaseModel):
    """The workload and the device of one benchmark (the model and the output path are given beside it:
    a recipe that benchmarks its exports reuses this as it is)."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = Field(128, description="prefill length pp (synthetic tokens)")
    gen_tokens: int = Field(128, description="decode length tg (single-token steps)")
    reps: int = Field(5, description="timed repetitions (after --warmup untimed ones)")
    warmup: int = Field(1, description="untimed repetitions before the timed ones")
    threads: Annotated[list[int] | None, Flag(split=True)] = Field(
        None, description="N or a sweep 1,2,4 (default: all cores)")
    allow_busy: bool = Field(
        False, description="report figures even when the load average leaves fewer idle cores than threads")
    remote: Annotated[str | None, Flag(metavar="ssh://user@host[:port]")] = Field(
        None, description="copy the model and a self-contained runner to this device and bench there")
    remote_python: str = Field("python3", description="python on the device (needs the backend runtime)")
    ssh_option: Annotated[list[str], Flag(metavar="KEY=VALUE")] = Field(
        default_factory=list, description="passed to ssh/scp as -o KEY=VALUE (repeatable), e.g. "
                                          "IdentityFile=~/.ssh/edge")

    @field_validator("threads", mode="before")
    @classmethod
    def _sweep(cls, value: object) -> object:
        return thread_sweep(value)

"""Student sampling through an OpenAI-compatible server: a local vLLM server for each round's student on a GPU."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolkit.runtime.llama_server import LlamaServer
from toolkit.runtime.openai_generator import OpenAIGenerator

SERVED_NAME = "student"  # the name vLLM serves the student under, whatever its folder


class VllmServer(LlamaServer):
    """`python -m vllm.entrypoints.openai.api_server` for one student folder or hub id, on 127.0.0.1.

    Started and stopped like LlamaServer (its own process group, log file, readiness on /v1/models).
    `extra_args` go to vLLM unchanged (e.g. --tensor-parallel-size 2 --gpu-memory-utilization 0.5).
    """

    label = "vLLM server"
    start_timeout_s = 900.0  # loading weights and capturing CUDA graphs takes minutes for large models

    def __init__(self, model: str | Path, log_path: Path, *, seed: int, max_model_len: int,
                 extra_args: list[str] | None = None):
        super().__init__(Path(model), log_path)
        self.model_ref = str(model)
        self.seed = seed
        self.max_model_len = max_model_len
        self.extra_args = extra_args or []

    def _check_model(self) -> None:
        pass  # a hub id is no local path; vLLM reports a missing model itself, and start() shows its log tail

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_ref,
                "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(self.port),
                "--seed", str(self.seed), "--max-model-len", str(self.max_model_len), *self.extra_args]


@contextmanager
def vllm_generator(model: str | Path, tokenizer, log_path: Path, *, seed: int, max_model_len: int, concurrency: int,
                   extra_args: list[str]) -> Iterator[OpenAIGenerator]:
    """A vLLM server for `model` for the duration of the block, and a generator that asks it as `tokenizer` (the
    student's) renders each prompt."""
    server = VllmServer(model, log_path, seed=seed, max_model_len=max_model_len, extra_args=extra_args)
    with server:
        # The key, if the user's extra_args gave vLLM one (--api-key), comes from this variable; OPENAI_API_KEY
        # is a cloud key that a local server has no use for.
        gen = OpenAIGenerator(server.base_url, SERVED_NAME, tokenizer=tokenizer, concurrency=concurrency, seed=seed,
                              api_key_env="TOOLKIT_VLLM_API_KEY")
        try:
            yield gen
        finally:
            gen.close()

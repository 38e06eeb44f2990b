"""Student sampling through an OpenAI-compatible server: a local vLLM server for each round's student on a GPU."""
from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import openai

from toolkit.core.errors import TeacherError
from toolkit.data.prompt_rule import render
from toolkit.runtime.llama_server import LlamaServer

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


class OpenAIGenerator:
    """The eval Generator interface over an OpenAI-compatible completions endpoint serving the student,
    `concurrency` requests in flight.

    Each prompt is rendered here by the prompt rule with the student's own tokenizer (chat template, or the plain
    format for a student without one) and sent as text to /v1/completions with `add_special_tokens: false` (vLLM's
    extension; the rendered text already holds every special token): the server sees the ids the student trained
    on. The chat endpoint would apply the server's idea of the template, which a plain-format student never saw,
    and would close an assistant prefix (a forced strategy tag) instead of continuing it.

    Not cached: the student changes every round, and its answers are recorded in the run folder.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, tokenizer, concurrency: int = 64, seed: int = 0,
                 timeout_s: float = 600.0):
        self.base_url, self.model, self.tok = base_url, model, tokenizer
        self.concurrency, self.seed, self.timeout_s = concurrency, seed, timeout_s

    def generate(self, prompts, max_new_tokens, temperature=0.0, on_done: Callable[[int], None] | None = None):
        return asyncio.run(self._all([render(self.tok, p) for p in prompts], max_new_tokens, temperature, on_done))

    async def _all(self, rendered, max_new_tokens, temperature, on_done) -> list[str]:
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key="not-needed", timeout=self.timeout_s,
                                    max_retries=2)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(i: int, text: str, stops: tuple[str, ...]) -> str:
            async with gate:
                try:
                    resp = await client.completions.create(
                        model=self.model, prompt=text, max_tokens=max_new_tokens, temperature=temperature,
                        stop=list(stops) or None, seed=self.seed + i,  # a seed per prompt: reproducible samples
                        extra_body={"add_special_tokens": False})
                except openai.OpenAIError as exc:
                    raise TeacherError(f"student server at {self.base_url} failed: "
                                       f"{str(exc).splitlines()[0][:200]}") from None
            if on_done:
                on_done(1)
            return resp.choices[0].text or ""

        try:
            return list(await asyncio.gather(*(one(i, text, stops) for i, (text, stops) in enumerate(rendered))))
        finally:
            await client.close()


@contextmanager
def vllm_generator(model: str | Path, tokenizer, log_path: Path, *, seed: int, max_model_len: int, concurrency: int,
                   extra_args: list[str]) -> Iterator[OpenAIGenerator]:
    """A vLLM server for `model` for the duration of the block, and a generator that asks it as `tokenizer` (the
    student's) renders each prompt."""
    server = VllmServer(model, log_path, seed=seed, max_model_len=max_model_len, extra_args=extra_args)
    with server:
        yield OpenAIGenerator(server.base_url, SERVED_NAME, tokenizer, concurrency=concurrency, seed=seed)

"""A local llama.cpp server as a generation backend, asked through the OpenAI-compatible client
(toolkit/runtime/openai_generator.py), with the calculator's streamed decoding."""
from __future__ import annotations

import tempfile
from pathlib import Path

from toolkit.core.defaults import default_threads
from toolkit.data.calculator import CONTINUES, MAY_CONTINUE
from toolkit.runtime.llama_server import LlamaServer
from toolkit.runtime.openai_generator import OpenAIGenerator, client_errors

from toolkit.eval.backend import llama_prompt
from toolkit.eval.calc_decode import End, assistant_prefix, stream_with_calculator


class LlamaServerGenerator(OpenAIGenerator):
    """A GGUF served by `python -m llama_cpp.server` on 127.0.0.1 for the generator's lifetime.

    llama_cpp.server answers one request at a time (DESIGN.md, serving trap), so concurrency is 1.
    """

    name = "llama.cpp-server"
    label = "llama.cpp server"
    calculator = False

    def __init__(self, path: Path, *, n_ctx: int = 2048, threads: int | None = None, seed: int = 0):
        self.path = Path(path)
        self._vocab = None  # the GGUF's tokenizer and template, loaded on the first generate
        self._no_extension = self._no_digits = None  # the calculator's logit_bias tables, built when first needed
        threads = threads or default_threads()
        self._logs = tempfile.TemporaryDirectory(prefix="toolkit-eval-server-")
        self.server = LlamaServer(path, Path(self._logs.name) / "server.log", n_ctx=n_ctx, threads=threads).start()
        super().__init__(self.server.base_url, Path(path).stem, concurrency=1, seed=seed)
        self.config.update(threads=threads, n_ctx=n_ctx, base_url="127.0.0.1 (started for this eval)")

    def generate(self, prompts, max_new_tokens, temperature=0.0, on_done=None):
        """Raw completions of each prompt as the prompt rule renders it for this GGUF (backend.llama_prompt), not
        chat completions: a GGUF without a chat template gets the plain format the student learned, not the
        server's fallback chat format, and an assistant prefix (a forced tag) is continued."""
        if self._vocab is None:
            # heavy optional runtime, imported on first use
            from llama_cpp import Llama

            self._vocab = Llama(str(self.path), vocab_only=True, verbose=False)  # its tokenizer and template
        if self.calculator and self._no_extension is None:
            # logit_bias that keeps a forced result's number from being extended: right after it no digit and
            # no `.5` or `,000` (self._no_extension); after a lone `.` or `,` no digit (self._no_digits)
            texts = [self._vocab.detokenize([t]).decode(errors="replace") for t in range(self._vocab.n_vocab())]
            self._no_extension = {str(t): -100 for t, text in enumerate(texts) if CONTINUES.match(text)}
            self._no_digits = {str(t): -100 for t, text in enumerate(texts) if text[:1].isdigit()}
        out, self.calc_counts = [], []
        for p in prompts:
            prompt, stops = llama_prompt(self._vocab, p)
            opener = lambda gen, budget, guard: self._stream(prompt + gen, budget, stops, temperature, guard)  # noqa: E731
            if self.calculator:
                text, forced, changed = stream_with_calculator(opener, assistant_prefix(p), max_new_tokens)
            else:
                text = "".join(x for x in opener("", max_new_tokens, False) if isinstance(x, str))  # pieces, then End
                forced = changed = 0
            out.append(text)
            self.calc_counts.append((forced, changed))
            if on_done:
                on_done(1)
        return out

    def _stream(self, prompt: str, max_tokens: int, stops: list[str], temperature: float, guard: bool):
        """The server's raw completion of `prompt`, one piece per token, then an End; with `guard` the
        first tokens come from one-token requests that keep them from extending the number `prompt` ends with."""
        args = dict(model=self.model, temperature=temperature, seed=self.seed, stop=stops)
        with client_errors(self.label, self.base_url, self.client.api_key, " to a raw completion"):
            after = "" if guard else None  # the text since the forced result while it could still be extended
            while after is not None:
                bias = self._no_digits if after else self._no_extension
                first = self.client.completions.create(prompt=prompt, max_tokens=1, logit_bias=bias, **args)
                choice = first.choices[0]
                if choice.text:
                    yield choice.text
                    prompt, max_tokens = prompt + choice.text, max_tokens - 1
                if choice.finish_reason == "stop" or max_tokens <= 0:
                    yield End(choice.finish_reason == "stop")
                    return
                after = after + choice.text if choice.text and after + choice.text in MAY_CONTINUE else None
            stream = self.client.completions.create(prompt=prompt, max_tokens=max_tokens, stream=True, **args)
            try:
                for chunk in stream:
                    choice = chunk.choices[0]
                    if choice.text:
                        yield choice.text
                    if choice.finish_reason:
                        yield End(choice.finish_reason == "stop")
                        return
                yield End(False)
            finally:
                stream.close()  # the server stops decoding when the client goes

    def close(self) -> None:
        if self._vocab is not None:
            self._vocab.close()
        super().close()
        self.server.stop()
        self._logs.cleanup()

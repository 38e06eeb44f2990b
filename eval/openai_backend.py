"""OpenAI-compatible endpoints as a generation backend, and a local llama.cpp server behind one."""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import openai

from toolkit.core.defaults import default_threads
from toolkit.core.errors import ModelError, redact
from toolkit.data.calculator import CONTINUES, MAY_CONTINUE
from toolkit.data.prompt_rule import has_chat_template, render
from toolkit.runtime.llama_server import LlamaServer

from toolkit.eval.backend import llama_prompt
from toolkit.eval.calc_decode import End, assistant_prefix, stream_with_calculator


def parse_openai_ref(model: str) -> tuple[str, str]:
    """`openai:http://host:port/v1#model-name` -> (base URL, model name)."""
    body = model.removeprefix("openai:")
    base_url, _, name = body.partition("#")
    if not base_url.startswith(("http://", "https://")) or not name:
        raise ModelError(f"bad OpenAI model reference {model!r}: write openai:http://HOST:PORT/v1#MODEL")
    return base_url.rstrip("/"), name


class OpenAIGenerator:
    """Chat completions from any OpenAI-compatible server, `concurrency` requests in flight at once.

    The API key is read from the environment variable named `api_key_env` (unset: a placeholder
    that local servers accept); it is never logged or written into results.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, *, concurrency: int = 4, api_key_env: str = "OPENAI_API_KEY",
                 seed: int = 0, timeout_s: float = 600.0, tokenizer=None):
        self.base_url, self.model, self.seed = base_url, model, seed
        self.concurrency = max(1, concurrency)
        # With the served model's tokenizer, prompts are rendered here by the prompt rule (chat template or plain
        # format, as the student was trained) and sent as text to the completions endpoint; without, the server
        # applies its own chat template to the messages.
        self.tok = tokenizer
        self.client = openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "not-needed",
                                    timeout=timeout_s, max_retries=2)
        rendered = "prompt rule, rendered here ({}), completions endpoint".format(
            "chat template" if tokenizer is not None and has_chat_template(tokenizer) else "plain")
        self.config = {"base_url": base_url, "served_model": model, "concurrency": self.concurrency,
                       "api_key_env": api_key_env,
                       "prompt_format": rendered if tokenizer is not None else "server chat template"}

    @classmethod
    def from_ref(cls, model: str, **kwargs) -> OpenAIGenerator:
        base_url, name = parse_openai_ref(model)
        gen = cls(base_url, name, **kwargs)
        gen.check()
        return gen

    def check(self) -> None:
        """Fail early, in one line, when the endpoint is down or refuses the key."""
        try:
            self.client.with_options(timeout=10.0, max_retries=0).models.list()
        except openai.APIConnectionError:
            raise ModelError(f"OpenAI-compatible endpoint {self.base_url} is unreachable") from None
        except openai.APIStatusError as exc:
            raise ModelError(f"endpoint {self.base_url} answered {exc.status_code} to /models: "
                             f"{redact(str(exc.message), [self.client.api_key]).splitlines()[0]}") from None

    def _one(self, messages, max_new_tokens: int, temperature: float) -> str:
        try:
            if self.tok is not None:
                text, stops = render(self.tok, messages)
                resp = self.client.completions.create(
                    model=self.model, prompt=text, max_tokens=max_new_tokens, temperature=temperature, seed=self.seed,
                    stop=list(stops) or None, extra_body={"add_special_tokens": False})  # the text holds them all
            else:
                resp = self.client.chat.completions.create(model=self.model, messages=messages,
                                                           max_tokens=max_new_tokens, temperature=temperature,
                                                           seed=self.seed)
        except openai.APIConnectionError:
            raise ModelError(f"OpenAI-compatible endpoint {self.base_url} is unreachable") from None
        except openai.APIStatusError as exc:
            raise ModelError(f"endpoint {self.base_url} answered {exc.status_code}: "
                             f"{redact(str(exc.message), [self.client.api_key]).splitlines()[0]}") from None
        if not resp.choices:
            raise ModelError(f"endpoint {self.base_url} returned no choices for model {self.model}")
        return (resp.choices[0].text if self.tok is not None else resp.choices[0].message.content) or ""

    def generate(self, prompts, max_new_tokens, temperature=0.0, on_done=None):
        if self.tok is None and any(p and p[-1]["role"] == "assistant" for p in prompts):
            # chat APIs close that turn, not continue it; a rendered prompt continues it
            raise ModelError("a forced strategy tag (an assistant prefix) needs the torch, onnx or genai backend, or "
                             "an endpoint asked with --tokenizer; use --strategy auto or cot with a chat endpoint")
        out: list[str | None] = [None] * len(prompts)
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(self._one, p, max_new_tokens, temperature): i for i, p in enumerate(prompts)}
            for fut in as_completed(futures):
                out[futures[fut]] = fut.result()
                if on_done:
                    on_done(1)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.client.close()


class LlamaServerGenerator(OpenAIGenerator):
    """A GGUF served by `python -m llama_cpp.server` on 127.0.0.1 for the generator's lifetime.

    llama_cpp.server answers one request at a time (DESIGN.md, serving trap), so concurrency is 1.
    """

    name = "llama.cpp-server"
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
        try:
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
        except openai.APIConnectionError:
            raise ModelError(f"llama.cpp server {self.base_url} is unreachable") from None
        except openai.APIStatusError as exc:
            raise ModelError(f"llama.cpp server {self.base_url} answered {exc.status_code} to a raw completion: "
                             f"{redact(str(exc.message), [self.client.api_key]).splitlines()[0]}") from None

    def close(self) -> None:
        if self._vocab is not None:
            self._vocab.close()
        super().close()
        self.server.stop()
        self._logs.cleanup()

"""Generation backends behind one interface (torch, onnxruntime, llama.cpp) and the choice among them."""
from __future__ import annotations

import json
from pathlib import Path

from toolkit.core.defaults import default_threads
from toolkit.core.errors import ModelError
from toolkit.core.integrity import check_onnx_folder
from toolkit.core.model_kind import BACKEND_OF_KIND, local_model
from toolkit.runtime.models import ModelRef, resolve_model
from toolkit.data.calculator import Sequence
from toolkit.data.prompt_rule import has_chat_template, read_record, render
from toolkit.runtime.loading import fix_special_tokens, load_model_and_tokenizer, load_tokenizer

from toolkit.eval.backend import BatchAnswers, Generator, length_sorted_batches, llama_prompt
from toolkit.eval.calc_decode import LlamaCppCalculator, TorchCalculator, assistant_prefix, hf_sequence
from toolkit.eval.genai_backend import GenaiGenerator
from toolkit.eval.gqa_attention import grouped_sdpa
from toolkit.eval.openai_backend import LlamaServerGenerator
from toolkit.runtime.openai_generator import OpenAIGenerator


class TorchGenerator:
    """`model.generate` on left-padded batches: a transformers model, or optimum's ORT model (same API)."""

    name = "torch"
    calculator = False
    # Grouped key/value heads go to SDPA as they are, not copied per query head (eval/gqa_attention.py: the same
    # answers, faster); False keeps transformers' own attention, for comparing the two.
    grouped_attention = True

    def __init__(self, model, tokenizer, batch_size: int = 16, threads: int | None = None, seed: int = 0):
        # heavy optional runtime, imported on first use
        import torch

        self.threads = threads or default_threads()
        torch.set_num_threads(self.threads)
        self.model = model.eval() if hasattr(model, "eval") else model
        self.tok = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.config = {"threads": self.threads, "batch_size": batch_size,
                       "prompt_format": "chat template" if has_chat_template(tokenizer) else "plain"}

    @classmethod
    def from_ref(cls, ref: ModelRef, batch_size: int = 16, threads: int | None = None, seed: int = 0):
        model, tok = load_model_and_tokenizer(ref)
        return cls(model, tok, batch_size, threads, seed)

    def generate(self, prompts, max_new_tokens, temperature=0.0, on_done=None):
        import torch

        self.tok.padding_side = "left"  # decoder-only batches pad on the left so outputs line up
        rendered = [render(self.tok, p) for p in prompts]
        answers = BatchAnswers([stops for _, stops in rendered])
        if temperature > 0:
            torch.manual_seed(self.seed)
        for idx in length_sorted_batches([len(text) for text, _ in rendered], self.batch_size):
            enc = self.tok([rendered[i][0] for i in idx], return_tensors="pt", padding=True,
                           add_special_tokens=False)
            kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens,
                          pad_token_id=self.tok.pad_token_id,
                          # every end token (fix_special_tokens lists them): Llama 3 may end with <|eom_id|>
                          eos_token_id=self.model.generation_config.eos_token_id)
            if temperature > 0:
                kwargs["temperature"] = temperature
            else:  # silence the model's generation_config sampling defaults under greedy decoding
                kwargs.update(temperature=None, top_p=None, top_k=None)
            seqs = []
            if self.calculator:
                from transformers import LogitsProcessorList

                seqs = [hf_sequence(self.tok, assistant_prefix(prompts[i])) for i in idx]
                kwargs["logits_processor"] = LogitsProcessorList([TorchCalculator(seqs, enc["input_ids"].shape[1])])
            with torch.inference_mode(), grouped_sdpa(self.model, self.grouped_attention):
                gen = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                          **kwargs)
            width = enc["input_ids"].shape[1]
            answers.put_batch(idx, [self.tok.decode(gen[row, width:], skip_special_tokens=True)
                                    for row in range(len(idx))], seqs, on_done)
        self.calc_counts = answers.calc_counts
        return answers.texts

    def close(self) -> None:
        pass


class OnnxGenerator(TorchGenerator):
    """onnxruntime through optimum's ORTModelForCausalLM: a folder with model.onnx and config.json."""

    name = "onnx"

    @classmethod
    def from_folder(cls, path: Path, batch_size: int = 16, threads: int | None = None, seed: int = 0):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM
        from transformers import AutoTokenizer

        threads = threads or default_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # explicit: ORT would otherwise take every core
        options.inter_op_num_threads = 1
        check_onnx_folder(path)
        onnx_files = sorted(p.name for p in path.glob("*.onnx"))
        name = "model.onnx" if "model.onnx" in onnx_files else onnx_files[0]
        try:
            model = ORTModelForCausalLM.from_pretrained(path, file_name=name, session_options=options)
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None
        fix_special_tokens(tok, model)
        gen = cls(model, tok, batch_size, threads, seed)
        gen.config["onnx_file"] = name
        return gen


class LlamaCppGenerator:
    """An in-process llama.cpp model (llama-cpp-python) for GGUF files; one prompt at a time.

    Prompts follow the prompt rule: the chat template stored in the GGUF, or the plain format for a GGUF
    without one.
    """

    name = "llama.cpp"
    calculator = False

    def __init__(self, path: Path, n_ctx: int = 2048, threads: int | None = None, seed: int = 0):
        from llama_cpp import Llama

        if not Path(path).is_file():
            raise ModelError(f"GGUF file not found: {path}")
        self.threads = threads or default_threads()
        # flash_attn: llama-cpp-python turns flash attention off unless asked, where llama.cpp's own tools turn it
        # on; off, decode ran at 0.90-0.93x (bench/results/decode_settings.json)
        try:
            self.llm = Llama(str(path), n_ctx=n_ctx, n_threads=self.threads, n_threads_batch=self.threads,
                             seed=seed, flash_attn=True, verbose=False)
        except ValueError as exc:
            raise ModelError(f"llama.cpp cannot load {path}: {exc}") from None
        self.seed = seed
        chat = bool(self.llm.metadata.get("tokenizer.chat_template"))
        self.config = {"threads": self.threads, "batch_size": 1, "n_ctx": n_ctx,
                       "prompt_format": "chat template" if chat else "plain"}

    def generate(self, prompts, max_new_tokens, temperature=0.0, on_done=None):
        """Raw completions of each prompt as the prompt rule renders it for this GGUF (backend.llama_prompt: its
        chat template as create_chat_completion renders it, no BOS added, its end token as the stop; or the plain
        format), so that an assistant prefix (a forced tag) is continued, not closed, and with the calculator a
        logits processor sees every token."""
        out, self.calc_counts = [], []
        for p in prompts:
            text, stops = llama_prompt(self.llm, p)
            ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
            seq = Sequence(lambda t: self.llm.detokenize(t).decode(errors="replace"),
                           lambda t: self.llm.tokenize(t.encode(), add_bos=False, special=False),
                           assistant_prefix(p)) if self.calculator else None
            resp = self.llm.create_completion(ids, max_tokens=max_new_tokens, temperature=temperature, seed=self.seed,
                                              stop=stops, logits_processor=[LlamaCppCalculator(seq, len(ids))] if seq
                                              else None)
            # with the calculator, a result that max_tokens cut off is written whole
            out.append((resp["choices"][0]["text"] or "") + (seq.unwritten() if seq else ""))
            self.calc_counts.append((seq.forced, seq.changed) if seq else (0, 0))
            if on_done:
                on_done(1)
        return out

    def close(self) -> None:
        self.llm.close()


BACKENDS = ("auto", "torch", "onnx", "genai", "llama.cpp", "llama.cpp-server", "openai")


def detect_backend(model: str) -> str:
    """The backend `auto` picks: .gguf or GGUF export folder -> llama.cpp, folder with genai_config.json -> genai,
    optimum folder with *.onnx -> onnx, `openai:` -> openai, anything else -> torch."""
    if model.startswith("openai:"):
        return "openai"
    if model.startswith("pkg:"):
        return "llama.cpp"
    path = Path(model).expanduser()
    found = local_model(path)
    if found is not None:
        return BACKEND_OF_KIND[found[0]]
    return "llama.cpp" if path.suffix == ".gguf" else "torch"


def export_info(model: str) -> dict | None:
    """The export.json an export folder carries (format, quant, …), or None."""
    path = Path(model).expanduser()
    for folder in (path, path.parent) if path.suffix == ".gguf" else (path,):
        meta = folder / "export.json"
        if meta.is_file():
            try:
                return json.loads(meta.read_text())
            except json.JSONDecodeError as exc:
                raise ModelError(f"{meta}: not valid JSON ({exc})") from None
    return None


def prompt_info(model: str) -> dict | None:
    """The prompt rule's record (prompt.json) of a local student or export folder, or of a .gguf in an export
    folder; None for any other model."""
    path = Path(model).expanduser()
    if path.is_dir():
        return read_record(path)
    if path.suffix == ".gguf" and (path.parent / "export.json").is_file():
        return read_record(path.parent)
    return None


def _folder(model: str, backend: str, marker: str) -> Path:
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelError(f"backend {backend} needs an export folder; {model!r} is not a folder")
    if not list(path.glob(marker)):
        raise ModelError(f"backend {backend} needs {marker} in {path}; it has none")
    return path.resolve()


def open_generator(model: str, backend: str = "auto", *, batch_size: int = 16, threads: int | None = None,
                   n_ctx: int = 2048, seed: int = 0, concurrency: int = 4, api_key_env: str = "OPENAI_API_KEY",
                   calculator: bool = False, tokenizer: str | None = None) -> Generator:
    """The generator for a model reference under `backend` (`auto`: see `detect_backend`); `calculator`
    switches the calculator in decoding on (eval/calc_decode.py); `tokenizer` (a model reference, openai only):
    the served model's tokenizer, with which prompts are rendered here and sent to the completions endpoint."""
    if backend == "auto":
        backend = detect_backend(model)
    remote = backend == "openai"
    if calculator and remote:
        raise ModelError("--calculator needs to steer decoding, which a remote chat endpoint does not allow; "
                         "use a local model (torch, onnx, genai, llama.cpp) or --backend llama.cpp-server")
    if tokenizer and not remote:
        raise ModelError("--tokenizer goes with an openai:URL#MODEL endpoint; a local model brings its own")
    gen = _open(model, backend, batch_size=batch_size, threads=threads, n_ctx=n_ctx, seed=seed,
                concurrency=concurrency, api_key_env=api_key_env, tokenizer=tokenizer)
    gen.calculator = calculator
    gen.config["calculator"] = calculator
    return gen


def _open(model: str, backend: str, *, batch_size: int, threads: int | None, n_ctx: int, seed: int,
          concurrency: int, api_key_env: str, tokenizer: str | None) -> Generator:
    if backend == "openai":
        tok = load_tokenizer(resolve_model(tokenizer)) if tokenizer else None
        return OpenAIGenerator.from_ref(model, concurrency=concurrency, api_key_env=api_key_env, seed=seed,
                                        tokenizer=tok)
    if backend == "genai":
        return GenaiGenerator(_folder(model, backend, "genai_config.json"), batch_size=batch_size,
                              threads=threads, seed=seed)
    if backend == "onnx":
        return OnnxGenerator.from_folder(_folder(model, backend, "*.onnx"), batch_size, threads, seed)
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    ref = resolve_model(model)
    if backend in ("llama.cpp", "llama.cpp-server"):
        if ref.kind != "gguf":
            raise ModelError(f"backend {backend} needs a GGUF file; {model} is a {ref.kind} model")
        if backend == "llama.cpp":
            return LlamaCppGenerator(ref.path, n_ctx=n_ctx, threads=threads, seed=seed)
        return LlamaServerGenerator(ref.path, n_ctx=n_ctx, threads=threads, seed=seed)
    return TorchGenerator.from_ref(ref, batch_size=batch_size, threads=threads, seed=seed)

"""Shared fixtures: the data folder, a tiny tokenizer, tiny random llama and qwen2 models built on the spot, and
helpers that run or kill the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import settings as hypothesis_settings

ROOT = Path(__file__).resolve().parents[1]

# Property tests (hypothesis) run at a fixed budget: the same number of examples, and the same examples
# (derandomize), here and in CI, so the suite's time is known. A suite may set its own budget with @settings.
hypothesis_settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True)
hypothesis_settings.load_profile("ci")


def pytest_report_header(config) -> str:
    budget = hypothesis_settings.default
    return (f"hypothesis budget: profile 'ci', max_examples={budget.max_examples}, deadline={budget.deadline}, "
            f"derandomize={budget.derandomize}")


_BUDGETS: dict[str, int] = {}  # property test node id -> its max_examples, as collected


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        fn = getattr(item, "obj", None)
        if getattr(fn, "is_hypothesis_test", False):
            # hypothesis keeps a test's own @settings on the wrapped function; without one, the profile's
            own = getattr(fn, "_hypothesis_internal_use_settings", None)
            _BUDGETS[item.nodeid] = (own or hypothesis_settings.default).max_examples


def pytest_terminal_summary(terminalreporter) -> None:
    """Printed under -q too (the header is not): each property suite's example budget."""
    if not _BUDGETS:
        return
    per_file: dict[str, set[int]] = {}
    for nodeid, n in _BUDGETS.items():
        per_file.setdefault(nodeid.split("::")[0], set()).add(n)
    parts = ", ".join(f"{path} {'/'.join(map(str, sorted(ns)))}" for path, ns in sorted(per_file.items()))
    terminalreporter.write_line(f"hypothesis budget (max_examples per property test, derandomized): {parts}")


# TOOLKIT_TEST_DATA points the tests at another copy of the shared data (or, in tests of this very rule, at none).
DATA = Path(os.environ.get("TOOLKIT_TEST_DATA") or ROOT.parent / "shared" / "data")


def in_ci() -> bool:
    """`CI` is set, as CI services set it (GitHub Actions, GitLab: `true`); "0", "false" and "no" mean not."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> NoReturn:
    """Skip a test whose shared data or packaged model is missing; under CI fail it instead, naming what is
    missing: there a missing requirement is a broken install, and skipping would turn it into a green run."""
    if in_ci():
        pytest.fail(f"{what} (CI is set, so a missing requirement fails instead of skipping)", pytrace=False)
    pytest.skip(what)

# ChatML, the template SmolLM2 and Qwen2.5 use.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own teacher cache, never the user's ~/.cache/toolkit: a cache another test
    filled would hide the requests a test counts at the server."""
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "toolkit-cache"))
    # A suite that is nowhere is downloaded (toolkit.data.fetch): never from the internet in a test, and at once.
    monkeypatch.setenv("TOOLKIT_DATA_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA.is_dir():
        missing(f"test data not found at {DATA}")
    return DATA


# Llama 3's turn format (Llama-3.2-1B-Instruct's template without its date and tools preamble).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Gemma 3's turn format (gemma-3-1b-it's template without its system-prompt folding and image handling).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Special tokens in the order of the real vocabularies (so their relative ids match): Llama-3.2's 128000, 128001,
# 128006, 128007, 128008, 128009 and Gemma 3's 0, 1, 2, 3, 105, 106.
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
                   "<|eot_id|>"]
GEMMA3_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def build_tiny_tokenizer(path: Path, specials: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                         template: str = CHATML, **roles: str | None):
    """A byte-level BPE tokenizer (~600 tokens) trained on MultiArith-like text; by default with ChatML specials
    (`roles`: bos_token, eos_token, pad_token, unk_token; `specials` get the first ids, in order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "Tom has 3 apples and buys 5 more. How many apples does he have?",
        "He has 3 + 5 = 8 apples. The answer is 8.",
        "A baker makes 24 muffins and sells 18 of them. How many are left? 24 - 18 = 6. The answer is 6.",
        "Solve the math word problem step by step. Show each calculation, then finish with a last line.",
        "Each box holds 7 pencils. There are 4 boxes, so 4 * 7 = 28 pencils in total. Divide by 2.",
        "system user assistant question answer number dollars tickets cost change left total",
    ] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=list(specials),
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    roles = roles or {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                      "unk_token": "<|endoftext|>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **roles)
    fast.chat_template = template
    fast.save_pretrained(path)
    return fast


def drop_chat_template(folder: Path) -> None:
    """Make `folder`'s tokenizer one without a chat template (a base model's), wherever transformers keeps it."""
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-64 random llama saved as a save_pretrained folder with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tiny_tokenizer(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def build_export_model(path: Path, arch: str) -> Path:
    """A 2-layer hidden-64 random model with weights large enough (std 0.3) that greedy output varies."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = build_tiny_tokenizer(path)
    torch.manual_seed(0)
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                        initializer_range=0.3, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, tie_word_embeddings=arch == "qwen2")
    model = model_cls(config)
    if arch == "qwen2":  # qwen2 has q/k/v biases (zero at init): make them count
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.3)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_source(request, tmp_path_factory) -> Path:
    """Export sources: a tiny llama (untied head) and a tiny qwen2 (tied head, biases)."""
    return build_export_model(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A 2-layer random GPT-2 folder with the tiny tokenizer: an architecture `toolkit export` refuses
    (it exports llama and qwen2 only)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tok = build_tiny_tokenizer(path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def build_turn_model(path: Path, family: str) -> Path:
    """A 2-layer hidden-64 random model folder shaped like Llama-3.2-1B-Instruct ("llama3": end tokens
    [<|end_of_text|>, <|eom_id|>, <|eot_id|>], tokenizer EOS <|eot_id|>) or gemma-3-1b-it ("gemma3": a
    Gemma3ForCausalLM, end tokens [<eos>, <end_of_turn>], tokenizer EOS <eos>), each with its turn template;
    the config and the generation config list every end token, as the hub's do."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    if family == "llama3":
        tok = build_tiny_tokenizer(path, LLAMA3_SPECIALS, LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>")
        ends = tok.convert_tokens_to_ids(["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"])
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=ends,
                                             tie_word_embeddings=True, **sizes))
    else:
        tok = build_tiny_tokenizer(path, GEMMA3_SPECIALS, GEMMA3_TEMPLATE, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
        ends = tok.convert_tokens_to_ids(["<eos>", "<end_of_turn>"])
        model = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=len(tok), head_dim=16, bos_token_id=tok.bos_token_id,
                                                   eos_token_id=ends, pad_token_id=tok.pad_token_id, **sizes))
    assert model.generation_config.eos_token_id == ends
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llama3_dir(tmp_path_factory) -> Path:
    return build_turn_model(tmp_path_factory.mktemp("tiny-llama3"), "llama3")


@pytest.fixture(scope="session")
def gemma3_dir(tmp_path_factory) -> Path:
    return build_turn_model(tmp_path_factory.mktemp("tiny-gemma3"), "gemma3")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF (the [demo] extra), a real model small enough to serve."""
    from toolkit.core.errors import ModelError
    from toolkit.runtime.models import packaged_gguf

    try:
        return packaged_gguf("smollm2-135m-instruct")
    except ModelError as exc:
        missing(str(exc))


# Problems easy enough that SmolLM2-135M, the test teacher, gets some of them right.
EASY = [
    ("What is 2 plus 3?", 5), ("What is 4 plus 4?", 8), ("What is 10 minus 3?", 7),
    ("What is 3 plus 3?", 6), ("What is 5 plus 1?", 6), ("What is 9 minus 4?", 5),
    ("What is 2 times 3?", 6), ("What is 1 plus 1?", 2),
]


def write_tiny_recipe(tmp_path: Path, student: Path, base_url: str) -> Path:
    """A tiny distillation recipe: 8 easy problems, a real teacher at `base_url`, a tiny student."""
    write_jsonl(tmp_path / "easy.jsonl", [{"id": f"e{i}", "question": q, "answer": a}
                                          for i, (q, a) in enumerate(EASY)])
    text = f"""\
name: tiny
seed: 0
output_dir: {tmp_path / 'runs'}
data:
  train: {{path: easy.jsonl}}
  train_size: 6
  heldout_size: 2
teacher:
  model: smollm2
  backend: openai
  base_url: {base_url}
  temperature: 0.7
  max_tokens: 48
student:
  model: {student}
distill:
  paths_per_problem: 2
train:
  max_steps: 2
  batch_size: 2
  seq_len: 256
  threads: 1
eval:
  max_new_tokens: 8
  batch_size: 2
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def toolkit(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, timeout=timeout)


def kill_when(cmd: list[str], cwd: Path, ready, timeout: float = 300, poll_s: float = 0.2) -> None:
    """Start `cmd` in its own session, wait until `ready()` holds (asked every `poll_s` seconds), then
    kill -9 its whole process group, as a crash or an out-of-memory kill would."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "NO_COLOR": "1"})
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the command ended before the kill point"
            assert time.monotonic() < deadline, f"kill point not reached within {timeout:.0f} s"
            time.sleep(poll_s)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def teacher_server(smollm2_gguf, tmp_path_factory):
    """A real llama.cpp server with SmolLM2-135M on 127.0.0.1 as the test teacher; its log counts requests."""
    from toolkit.runtime.llama_server import LlamaServer

    with LlamaServer(smollm2_gguf, tmp_path_factory.mktemp("teacher") / "server.log", n_ctx=1024,
                     threads=2) as srv:
        yield srv


@pytest.fixture
def no_bwrap(monkeypatch):
    """A machine without bubblewrap: TOOLKIT_BWRAP names a binary that does not exist."""
    from toolkit.sandbox import runner

    monkeypatch.setenv("TOOLKIT_BWRAP", "/nonexistent/bwrap")
    monkeypatch.delenv("TOOLKIT_SANDBOX", raising=False)
    monkeypatch.setattr(runner, "_mode", None)
    monkeypatch.setattr(runner, "_warned_unsafe", False)


DEAD = "http://127.0.0.1:9/v1"  # nothing is asked of the teacher before these errors


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """The CLI ended with exit 2 and one `error:` line naming every needle, never a traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr
    return r.stderr

"""`toolkit export`: every format and quantization on tiny random llama and qwen2 models, loaded back with the
plain runtime; the packaged-GGUF tokenizer round trip; parity failures, bundles and clear errors."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.conftest import build_tiny_tokenizer, toolkit
from toolkit.core.errors import ExportError, ModelError
from toolkit.eval.safetar import safe_extract
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model


def _build(path: Path, arch: str) -> Path:
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
def tiny(request, tmp_path_factory) -> Path:
    """Tiny llama (untied head) and tiny qwen2 (tied head, biases)."""
    return _build(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


def _hf_ids(model_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False)["input_ids"]


def _common(m: dict, fmt: str, quant: str) -> None:
    assert m["format"] == fmt and m["quant"] == quant
    assert {"source", "files", "versions", "seconds", "parity", "notes", "passed"} <= set(m)
    assert m["parity"]["tokenizer"]["exact"], m["parity"]["tokenizer"]
    for f in m["files"]:
        assert f["bytes"] > 0 and len(f["sha256"]) == 64


TEXT = "Tom has 1,080 apples; he eats 3/4 of them. How many are left?"


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0", "q4_k_m"])
def test_gguf(tiny, tmp_path, quant):
    from llama_cpp import Llama

    out = tmp_path / "out"
    m = export_model(str(tiny), out, ExportConfig(format="gguf", quant=quant, threads=1))
    _common(m, "gguf", quant)
    assert [f["path"] for f in m["files"]] == [f"model-{quant}.gguf"]
    saved = json.loads((out / "export.json").read_text())
    assert saved["passed"] == m["passed"] and saved["files"] == m["files"]
    if quant == "f16":  # unquantized: the whole greedy continuation equals torch's
        assert m["parity"]["greedy"]["exact_sequences"] == 1.0 and m["passed"]
    if quant == "q4_k_m":  # 64/128-column rows cannot take k-quants: the manifest says so
        assert any("cannot take Q4_K_M" in n for n in m["notes"]), m["notes"]
    llm = Llama(str(out / f"model-{quant}.gguf"), n_ctx=128, n_threads=1, verbose=False)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == _hf_ids(tiny, TEXT)
    assert len(llm.create_completion(TEXT, max_tokens=4, temperature=0.0)["choices"][0]["text"]) > 0


def test_gguf_llama_rope_layout_is_what_parity_checks(tmp_path, monkeypatch):
    """Writing llama q/k without the RoPE row interleave gives a loadable file that answers differently:
    parity must see it and --check must fail."""
    from toolkit.export import gguf_writer

    src = _build(tmp_path / "llama", "llama")
    monkeypatch.setattr(gguf_writer, "rope_interleave", lambda w, n_head: w)
    with pytest.raises(ExportError, match="parity below thresholds"):
        export_model(str(src), tmp_path / "out", ExportConfig(format="gguf", quant="f16", threads=1, check=True))
    saved = json.loads((tmp_path / "out" / "export.json").read_text())
    assert saved["passed"] is False and saved["parity"]["greedy"]["exact_sequences"] < 1.0
    assert (tmp_path / "out" / "model-f16.gguf").is_file()  # files kept, marked failed


@pytest.mark.parametrize("quant", ["fp32", "int8", "int4"])
def test_onnx(tiny, tmp_path, quant):
    import onnx
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    out = tmp_path / "out"
    m = export_model(str(tiny), out, ExportConfig(format="onnx", quant=quant, threads=1))
    _common(m, "onnx", quant)
    if quant == "fp32":
        assert m["passed"] and m["parity"]["greedy"]["exact_sequences"] == 1.0
    names = {f["path"] for f in m["files"]}
    assert {"model.onnx", "config.json", "tokenizer.json"} <= names
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"])
    assert "input_ids" in [i.name for i in session.get_inputs()]
    model = ORTModelForCausalLM.from_pretrained(out, session_options=so)
    ids = torch.tensor([_hf_ids(tiny, TEXT)])
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    graph = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    inits = {i.name: list(i.dims) for i in graph.graph.initializer}
    vocab = len(json.loads((tiny / "tokenizer.json").read_text())["model"]["vocab"])
    # a full fp32 vocab × hidden(64) table left over (block scales are vocab × 2, per-channel scales 1-D)
    float_tables = [n.name for n in graph.graph.initializer
                    if n.data_type == onnx.TensorProto.FLOAT and sorted(n.dims) == sorted([vocab, 64])]
    if quant == "int4":  # embedding and (tied) LM head quantized too: no fp32 vocab-sized table left
        assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and not float_tables, inits
        assert _head_bits(out) == 8  # the LM head at 8 bits
    if quant == "int8":
        assert "MatMulInteger" in ops and not float_tables, inits


def test_onnx_int4_smaller_than_int8(tmp_path):
    """The tied embedding no longer stays fp32 in int4 (DESIGN: stock int4 was larger than int8)."""
    src = _build(tmp_path / "qwen2", "qwen2")
    sizes = {q: export_model(str(src), tmp_path / q, ExportConfig(format="onnx", quant=q, threads=1))["total_bytes"]
             for q in ("int8", "int4")}
    assert sizes["int4"] < sizes["int8"], sizes


@pytest.mark.parametrize("quant", ["int4", "fp32"])
def test_genai(tiny, tmp_path, quant):
    import onnxruntime_genai as og

    out = tmp_path / "out"
    m = export_model(str(tiny), out, ExportConfig(format="genai", quant=quant, threads=1))
    _common(m, "genai", quant)
    if quant == "fp32":
        assert m["passed"] and m["parity"]["greedy"]["first_token_match"] == 1.0
    assert (out / "genai_config.json").is_file() and (out / "model.onnx").is_file()
    model = og.Model(str(out))
    assert list(og.Tokenizer(model).encode(TEXT)) == _hf_ids(tiny, TEXT)
    tied = json.loads((tiny / "config.json").read_text())["tie_word_embeddings"]
    if quant == "int4":
        assert _head_bits(out) == 8  # the default: the LM head at 8 bits, the rest at 4
    if quant == "int4" and tied:  # one quantized table for embedding and head, no fp32 vocab × hidden(64) left
        import onnx

        graph = onnx.load(str(out / "model.onnx"))
        vocab = len(json.loads((tiny / "tokenizer.json").read_text())["model"]["vocab"])
        assert not [i.name for i in graph.graph.initializer
                    if i.data_type == onnx.TensorProto.FLOAT and sorted(i.dims) == sorted([vocab, 64])]
        assert {n.op_type: _bits(n) for n in graph.graph.node if "embed_tokens" in n.name}["GatherBlockQuantized"] == 8


def _bits(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "bits"), None)


def _head_bits(out: Path) -> int:
    """The bits of the LM head (the MatMulNBits that writes `logits`) in an ONNX or genai export."""
    import onnx

    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    heads = [n for n in graph.node if "logits" in n.output and n.op_type == "MatMulNBits"]
    assert len(heads) == 1, [(n.name, n.op_type) for n in graph.node if "logits" in n.output]
    return _bits(heads[0])


@pytest.mark.parametrize("fmt", ["genai", "onnx"])
def test_int4_head_bits_4_is_smaller(tmp_path, fmt):
    """--int4-head-bits 4 puts the head (and in genai a tied embedding) at 4 bits too: the smallest file."""
    src = _build(tmp_path / "src", "qwen2")
    eight = export_model(str(src), tmp_path / "h8", ExportConfig(format=fmt, quant="int4", threads=1, max_new_tokens=2))
    four = export_model(str(src), tmp_path / "h4",
                        ExportConfig(format=fmt, quant="int4", threads=1, max_new_tokens=2, int4_head_bits=4))
    assert _head_bits(tmp_path / "h8") == 8 and _head_bits(tmp_path / "h4") == 4
    assert four["total_bytes"] < eight["total_bytes"]
    assert any("LM head at 4 bits" in n for n in four["notes"])


def test_packaged_gguf_tokenizer_round_trip(tmp_path, smollm2_gguf):
    """A student built from pkg:smollm2 (as training saves it) exports to a GGUF whose llama.cpp token ids are
    the HF tokenizer's: the base GGUF's tokenizer metadata is found through config.json and carried over."""
    from llama_cpp import Llama

    from toolkit.training.loading import load_model_and_tokenizer
    from toolkit.core.models import resolve_model

    model, tok = load_model_and_tokenizer(resolve_model("pkg:smollm2-135m-instruct"))
    student = tmp_path / "student"
    model.save_pretrained(student, safe_serialization=True)
    tok.save_pretrained(student)
    assert json.loads((student / "config.json").read_text())["toolkit_base"]["ref"] == "pkg:smollm2-135m-instruct"
    m = export_model(str(student), tmp_path / "out",
                     ExportConfig(format="gguf", quant="q8_0", threads=1, max_new_tokens=8))
    assert m["source"]["tokenizer_gguf"] == str(smollm2_gguf)
    assert m["parity"]["tokenizer"]["exact"] and m["parity"]["tokenizer"]["texts"] >= 6
    assert m["parity"]["greedy"]["first_token_match"] == 1.0, m["parity"]["greedy"]
    llm = Llama(str(tmp_path / "out" / "model-q8_0.gguf"), n_ctx=256, n_threads=1, vocab_only=True, verbose=False)
    text = tok.apply_chat_template([{"role": "user", "content": TEXT}], add_generation_prompt=True, tokenize=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False)["input_ids"]


def test_genai_reads_a_gguf_derived_tokenizer_like_hf(tmp_path, smollm2_gguf):
    """transformers' GGUF-derived SmolLM2 tokenizer (byte_fallback, LlamaTokenizer class) gives -1 ids in
    onnxruntime-genai unless cleaned; cleaned, genai's ids equal HF's (tokenization needs no matching weights,
    so a tiny genai model carries the SmolLM2 tokenizer files)."""
    import shutil

    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    from toolkit.export.genai import clean_byte_level_tokenizer
    from toolkit.training.loading import load_tokenizer
    from toolkit.core.models import resolve_model

    src = _build(tmp_path / "qwen2", "qwen2")
    out = tmp_path / "genai"
    export_model(str(src), out, ExportConfig(format="genai", quant="fp32", threads=1, max_new_tokens=2))
    hf = load_tokenizer(resolve_model(str(smollm2_gguf)))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / f).unlink(missing_ok=True)
    hf.save_pretrained(out)
    texts = ["Tom has 3 apples and buys 5 more.", "Ünïcödé café – 12.5% of €40?\n\tTabs,  double  spaces "]
    want = [hf(t, add_special_tokens=False)["input_ids"] for t in texts]
    broken = og.Tokenizer(og.Model(str(out)))
    assert [list(broken.encode(t)) for t in texts] != want  # the trap, as shipped by transformers
    assert clean_byte_level_tokenizer(out) and not (out / "tokenizer.model").exists()
    fixed = og.Tokenizer(og.Model(str(out)))
    assert [list(fixed.encode(t)) for t in texts] == want
    again = AutoTokenizer.from_pretrained(out)
    assert [again(t, add_special_tokens=False)["input_ids"] for t in texts] == want
    shutil.rmtree(out)

def test_check_thresholds_fail_but_keep_files(tmp_path):
    src = _build(tmp_path / "llama", "llama")
    with pytest.raises(ExportError, match="files kept"):
        export_model(str(src), tmp_path / "out",
                     ExportConfig(format="gguf", quant="q8_0", threads=1, check=True, min_token_agreement=1.01))
    saved = json.loads((tmp_path / "out" / "export.json").read_text())
    assert saved["passed"] is False and saved["parity"]["thresholds"]["min_token_agreement"] == 1.01
    assert (tmp_path / "out" / "model-q8_0.gguf").stat().st_size == saved["files"][0]["bytes"]


def test_accuracy_delta_on_a_math_suite(tmp_path, data_root):
    """export.json carries the source's and the export's accuracy on the same problems; an fp32 ONNX
    export answers exactly like its torch source, and --check enforces the allowed drop."""
    src = _build(tmp_path / "llama", "llama")
    m = export_model(str(src), tmp_path / "out", ExportConfig(format="onnx", quant="fp32", threads=1,
                                                              eval_suite="multiarith", eval_limit=4,
                                                              data_root=str(data_root)))
    acc = json.loads((tmp_path / "out" / "export.json").read_text())["parity"]["accuracy"]
    assert acc == m["parity"]["accuracy"]
    assert acc["suite"] == "multiarith" and acc["n"] == 4 and acc["same_output"] == 1.0
    assert acc["source"] == acc["export"] and acc["delta_points"] == {"strict_match": 0.0, "flexible_extract": 0.0}
    assert acc["passed"] and m["passed"]
    with pytest.raises(ExportError, match=r"strict accuracy \+0.0 points on 4 multiarith problems, allowed drop -1"):
        export_model(str(src), tmp_path / "out", ExportConfig(format="onnx", quant="fp32", threads=1,
                                                              eval_suite="multiarith", eval_limit=4,
                                                              data_root=str(data_root), max_accuracy_drop=-1,
                                                              check=True))
    kept = json.loads((tmp_path / "out" / "export.json").read_text())
    assert kept["passed"] is False and (tmp_path / "out" / "model.onnx").is_file()
    with pytest.raises(ExportError, match="--eval-suite 'mnist': choose one of gsm8k"):
        export_model(str(src), tmp_path / "o2",
                     ExportConfig(format="onnx", quant="fp32", eval_suite="mnist", data_root=str(data_root)))
    assert not (tmp_path / "o2").exists()  # refused before any export work


def _unpack(bundle: Path, into: Path) -> Path:
    safe_extract(bundle, into)  # the bench runner's member-checked unpacker (tar filters need Python >= 3.11.4)
    (folder,) = into.iterdir()
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    readme = (folder / "README.md").read_text()
    assert "Raspberry Pi" in readme and "Termux" in readme and "Laptop" in readme
    runner = (folder / "run.py").read_text()
    assert "toolkit" not in runner.split('"""')[2]  # the runner imports only the runtime
    return folder


@pytest.mark.parametrize("fmt, quant", [("gguf", "q4_0"), ("genai", "int4")])
def test_bundle_runs_with_the_runtime_only(tmp_path, fmt, quant):
    src = _build(tmp_path / "qwen2", "qwen2")
    m = export_model(str(src), tmp_path / "out", ExportConfig(format=fmt, quant=quant, threads=1, bundle=True))
    folder = _unpack(tmp_path / "out" / m["bundle"]["path"], tmp_path / "unpacked")
    args = ["--threads", "1"] if fmt == "gguf" else []
    # -I: isolated mode, so the toolkit checkout on sys.path cannot help the runner
    proc = subprocess.run([sys.executable, "-I", str(folder / "run.py"), "What is 2 plus 3?", "--max-tokens", "4",
                           *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_unsupported_architecture_and_corrupt_inputs(tmp_path, tiny_model_dir):
    import shutil

    gpt2 = tmp_path / "gpt2"
    shutil.copytree(tiny_model_dir, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ExportError, match="'gpt2' is not supported for export; supported: llama, qwen2"):
        export_model(str(gpt2), tmp_path / "o1", ExportConfig(format="gguf", quant="f16"))

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match="model.safetensors: weights file is corrupt or truncated"):
        export_model(str(truncated), tmp_path / "o2", ExportConfig(format="onnx", quant="fp32"))

    bad_config = tmp_path / "bad-config"
    shutil.copytree(tiny_model_dir, bad_config)
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read the model config"):
        export_model(str(bad_config), tmp_path / "o3", ExportConfig(format="genai", quant="int4"))

    gguf = tmp_path / "half.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)
    with pytest.raises(ModelError, match="not a readable GGUF file"):
        export_model(str(gguf), tmp_path / "o4", ExportConfig(format="gguf", quant="q8_0"))


def test_export_its_runtime_cannot_load_is_one_error_and_keeps_the_files(tmp_path, tiny_model_dir, monkeypatch):
    """The builder can write a graph that onnxruntime-genai refuses (measured: int4_algo_config
    k_quant with a tied head names an initializer it never writes). Here the real export loses one
    initializer the same way: one ExportError naming the runtime, files and export.json kept."""
    import onnx
    import onnxruntime_genai.models.builder as builder

    real = builder.create_model

    def drop_an_initializer(*args, **kwargs):
        real(*args, **kwargs)
        path = Path(args[2]) / "model.onnx"
        model = onnx.load(str(path))
        model.graph.initializer.pop(0)
        onnx.save(model, str(path))

    monkeypatch.setattr(builder, "create_model", drop_an_initializer)
    out = tmp_path / "broken"
    with pytest.raises(ExportError, match="onnxruntime-genai could not load the export in .*broken"):
        export_model(str(tiny_model_dir), out, ExportConfig(format="genai", quant="fp32", threads=1, max_new_tokens=2))
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["passed"] is False and "could not load" in manifest["error"]
    assert (out / "model.onnx").is_file() and (out / "genai_config.json").is_file()


def test_request_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ExportError, match="--format onnx takes --quant fp32, int8, int4; got 'q4_k_m'"):
        export_model(str(tiny_model_dir), tmp_path / "a", ExportConfig(format="onnx", quant="q4_k_m"))
    with pytest.raises(ValidationError, match="Input should be 'onnx', 'genai' or 'gguf'"):
        ExportConfig(format="tflite", quant="int8")
    assert not (tmp_path / "a").exists()  # refused before anything was written
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and holds no previous export"):
        export_model(str(tiny_model_dir), busy, ExportConfig(format="gguf", quant="f16"))
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="--bundle is for --format gguf or genai"):
        export_model(str(tiny_model_dir), tmp_path / "b", ExportConfig(format="onnx", quant="fp32", bundle=True))
    assert not (tmp_path / "b").exists()
    with pytest.raises(ExportError, match="--int4-head-bits is for --quant int4 of --format genai or onnx"):
        export_model(str(tiny_model_dir), tmp_path / "c", ExportConfig(format="gguf", quant="q4_0", int4_head_bits=4))
    with pytest.raises(ValidationError, match="Input should be 8 or 4"):
        ExportConfig(format="genai", quant="int4", int4_head_bits=6)
    assert not (tmp_path / "c").exists()


def test_kill_9_mid_export_then_the_same_command_finishes(tmp_path, tiny_model_dir):
    """A killed export leaves a folder marked incomplete and a scratch folder; running the same command
    again replaces the one and sweeps the other instead of refusing a non-empty folder."""
    import os
    import signal
    import time

    out = tmp_path / "exports" / "gguf"
    cmd = [sys.executable, "-m", "toolkit.cli", "export", str(tiny_model_dir), "--format", "gguf", "--quant", "q8_0",
           "--out", str(out), "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.parent.glob(".export-scratch-*/*")):  # the source is being read into scratch
        assert proc.poll() is None and time.monotonic() < deadline, "export ended before the kill point"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / ".export-incomplete").is_file() and not (out / "export.json").exists()
    again = toolkit(*cmd[3:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["gguf"]  # the killed run's scratch is gone
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["passed"] and not (out / ".export-incomplete").exists()
    assert [f["path"] for f in manifest["files"]] == ["model-q8_0.gguf"]


def test_cli(tmp_path, tiny_model_dir):
    proc = toolkit("export", str(tiny_model_dir), "--format", "gguf", "--quant", "q8_0", "--out", str(tmp_path / "o"),
                   "--threads", "1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest == json.loads((tmp_path / "o" / "export.json").read_text())
    bad = toolkit("export", str(tmp_path / "nope"), "--format", "gguf", "--quant", "f16", "--out",
                  str(tmp_path / "o2"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: model") and "Traceback" not in bad.stderr

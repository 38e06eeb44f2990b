"""onnxruntime-genai export (export/genai.py): int4 and fp32 load in genai with the HF tokenizer's ids; a
GGUF-derived tokenizer is cleaned for genai; an export genai cannot load is one error that keeps the files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import build_export_model
from tests.export_fixtures import TEXT, bits, exported, float_vocab_tables, head_bits, hf_ids
from toolkit.core.errors import ExportError
from toolkit.runtime.models import resolve_model
from toolkit.export.config import ExportConfig
from toolkit.export.genai import clean_byte_level_tokenizer
from toolkit.export.run import export_model
from toolkit.runtime.loading import load_tokenizer


@pytest.mark.parametrize("quant", ["int4", "fp32"])
def test_genai(tiny_source, tmp_path, quant):
    import onnxruntime_genai as og

    out = tmp_path / "out"
    m = exported(tiny_source, out, "genai", quant)
    if quant == "fp32":
        assert m["passed"] and m["parity"]["greedy"]["first_token_match"] == 1.0
    assert (out / "genai_config.json").is_file() and (out / "model.onnx").is_file()
    model = og.Model(str(out))
    assert list(og.Tokenizer(model).encode(TEXT)) == hf_ids(tiny_source, TEXT)
    tied = json.loads((tiny_source / "config.json").read_text())["tie_word_embeddings"]
    if quant == "int4":
        assert head_bits(out) == 8  # the default: the LM head at 8 bits, the rest at 4
    if quant == "int4" and tied:  # one quantized table for embedding and head, no fp32 vocab × hidden(64) left
        import onnx

        graph = onnx.load(str(out / "model.onnx"))
        assert not float_vocab_tables(graph, tiny_source)
        assert {n.op_type: bits(n) for n in graph.graph.node if "embed_tokens" in n.name}["GatherBlockQuantized"] == 8


def test_genai_reads_a_gguf_derived_tokenizer_like_hf(tmp_path, smollm2_gguf):
    """transformers' GGUF-derived SmolLM2 tokenizer (byte_fallback, LlamaTokenizer class) gives -1 ids in
    onnxruntime-genai unless cleaned; cleaned, genai's ids equal HF's (tokenization needs no matching weights,
    so a tiny_source genai model carries the SmolLM2 tokenizer files)."""
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    src = build_export_model(tmp_path / "qwen2", "qwen2")
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

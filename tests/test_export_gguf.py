"""GGUF export (export/gguf_writer.py, gguf_vocab.py, gguf_quant.py): every quantization loads in plain llama.cpp
with the HF tokenizer's ids; the RoPE row layout parity checks; the packaged-GGUF tokenizer carried over."""
from __future__ import annotations

import json

import pytest

from tests.conftest import build_export_model
from tests.export_fixtures import TEXT, exported, hf_ids
from toolkit.core.errors import ExportError
from toolkit.runtime.models import resolve_model
from toolkit.export import gguf_writer
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model
from toolkit.runtime.loading import load_model_and_tokenizer


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0", "q4_k_m"])
def test_gguf(tiny_source, tmp_path, quant):
    from llama_cpp import Llama

    out = tmp_path / "out"
    m = exported(tiny_source, out, "gguf", quant)
    assert [f["path"] for f in m["files"]] == [f"model-{quant}.gguf", "prompt.json"]
    saved = json.loads((out / "export.json").read_text())
    assert saved["passed"] == m["passed"] and saved["files"] == m["files"]
    if quant == "f16":  # unquantized: the whole greedy continuation equals torch's
        assert m["parity"]["greedy"]["exact_sequences"] == 1.0 and m["passed"]
    if quant == "q4_k_m":  # 64/128-column rows cannot take k-quants: the manifest says so
        assert any("cannot take Q4_K_M" in n for n in m["notes"]), m["notes"]
    llm = Llama(str(out / f"model-{quant}.gguf"), n_ctx=128, n_threads=1, verbose=False)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == hf_ids(tiny_source, TEXT)
    assert len(llm.create_completion(TEXT, max_tokens=4, temperature=0.0)["choices"][0]["text"]) > 0


def test_gguf_llama_rope_layout_is_what_parity_checks(tmp_path, monkeypatch):
    """Writing llama q/k without the RoPE row interleave gives a loadable file that answers differently:
    parity must see it and --check must fail."""
    src = build_export_model(tmp_path / "llama", "llama")
    monkeypatch.setattr(gguf_writer, "rope_interleave", lambda w, n_head: w)
    with pytest.raises(ExportError, match="parity below thresholds"):
        export_model(str(src), tmp_path / "out", ExportConfig(format="gguf", quant="f16", threads=1, check=True))
    saved = json.loads((tmp_path / "out" / "export.json").read_text())
    assert saved["passed"] is False and saved["parity"]["greedy"]["exact_sequences"] < 1.0
    assert (tmp_path / "out" / "model-f16.gguf").is_file()  # files kept, marked failed


def test_packaged_gguf_tokenizer_round_trip(tmp_path, smollm2_gguf):
    """A student built from pkg:smollm2 (as training saves it) exports to a GGUF whose llama.cpp token ids are
    the HF tokenizer's: the base GGUF's tokenizer metadata is found through config.json and carried over."""
    from llama_cpp import Llama

    model, tok = load_model_and_tokenizer(resolve_model("pkg:smollm2-135m-instruct"))
    student = tmp_path / "student"
    model.save_pretrained(student, safe_serialization=True)
    tok.save_pretrained(student)
    assert json.loads((student / "config.json").read_text())["toolkit_base"]["ref"] == "pkg:smollm2-135m-instruct"
    # f16: the weights themselves are checked by greedy agreement. (q8_0 flips a near-tie first token on one of the
    # three prompt-rule prompts, "12" against "To", which parity's quantized thresholds allow.)
    m = export_model(str(student), tmp_path / "out",
                     ExportConfig(format="gguf", quant="f16", threads=1, max_new_tokens=8))
    assert m["source"]["tokenizer_gguf"] == str(smollm2_gguf)
    assert m["parity"]["tokenizer"]["exact"] and m["parity"]["tokenizer"]["texts"] >= 6
    assert m["parity"]["greedy"]["exact_sequences"] == 1.0, m["parity"]["greedy"]
    llm = Llama(str(tmp_path / "out" / "model-f16.gguf"), n_ctx=256, n_threads=1, vocab_only=True, verbose=False)
    text = tok.apply_chat_template([{"role": "user", "content": TEXT}], add_generation_prompt=True, tokenize=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False)["input_ids"]

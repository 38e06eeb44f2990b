"""A student saved from a packaged GGUF base: no copy of the GGUF in its folder, the same token ids when reloaded,
and it still exports to GGUF and onnxruntime-genai."""
from __future__ import annotations

import pytest

from toolkit.core.recipe import TrainConfig
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model
from toolkit.runtime.loading import load_model_and_tokenizer
from toolkit.runtime.models import resolve_model

TEXTS = [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nTom has 1,080 apples and eats "
    "3/4 of them. How many are left?<|im_end|>\n<|im_start|>assistant\n",
    "1080 * 0.25 = 270.0; 12.5% of €40 is 5.00 → 270 + 5 = 275<|im_end|><|endoftext|>",
    "  2024-12-07\t-17 ≥ 3e-5 ... 9999999999\n\n",
]
# What llama.cpp and onnxruntime-genai must tokenize as HF does. Not TEXTS[2]: two spaces before a digit are one
# token in llama.cpp's SmolLM2 GGUF and two in the tokenizer transformers builds from it, whatever the folder holds
# (DESIGN.md, tokenizer trap).
RUNTIME_TEXTS = TEXTS[:2]


@pytest.mark.slow
def test_a_student_trained_from_a_packaged_gguf_holds_no_copy_of_it(tmp_path, smollm2_gguf):
    import onnxruntime_genai as og
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from toolkit.training.train import tokenize_example, train

    model, tok = load_model_and_tokenizer(resolve_model("pkg:smollm2-135m-instruct"))
    examples = [tokenize_example(tok, [{"role": "user", "content": "What is 3 plus 5?"}], "3 + 5 = 8.", 64)] * 2
    cfg = TrainConfig(max_steps=1, batch_size=2, seq_len=64, threads=1, checkpoint_every=0)
    student = tmp_path / "student"
    train(model, tok, examples, cfg, student, seed=0)
    del model

    assert not (student / "tokenizer.model").exists()
    copies = []
    for f in student.iterdir():
        with open(f, "rb") as fh:
            if fh.read(4) == b"GGUF":
                copies.append(f.name)
    assert copies == []
    again = AutoTokenizer.from_pretrained(student)
    for special in (False, True):
        assert [again(t, add_special_tokens=special)["input_ids"] for t in TEXTS] == \
            [tok(t, add_special_tokens=special)["input_ids"] for t in TEXTS]
    assert again.eos_token == tok.eos_token == "<|im_end|>"

    gguf = export_model(str(student), tmp_path / "gguf",
                        ExportConfig(format="gguf", quant="q8_0", threads=1, max_new_tokens=4))
    assert gguf["parity"]["tokenizer"]["exact"] and gguf["source"]["tokenizer_gguf"] == str(smollm2_gguf)
    llm = Llama(str(tmp_path / "gguf" / "model-q8_0.gguf"), n_ctx=256, n_threads=1, vocab_only=True, verbose=False)
    assert [llm.tokenize(t.encode(), add_bos=False, special=True) for t in RUNTIME_TEXTS] == \
        [tok(t, add_special_tokens=False)["input_ids"] for t in RUNTIME_TEXTS]
    genai = export_model(str(student), tmp_path / "genai",
                         ExportConfig(format="genai", quant="int4", threads=1, max_new_tokens=4))
    assert genai["parity"]["tokenizer"]["exact"]
    assert not (tmp_path / "genai" / "tokenizer.model").exists()
    og_tok = og.Tokenizer(og.Model(str(tmp_path / "genai")))
    assert [list(og_tok.encode(t)) for t in RUNTIME_TEXTS] == [tok(t, add_special_tokens=False)["input_ids"]
                                                               for t in RUNTIME_TEXTS]

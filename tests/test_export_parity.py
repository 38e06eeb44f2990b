"""Parity thresholds (export/parity.py): an export below them fails --check, its files kept and marked failed."""
from __future__ import annotations

import json

import pytest

from tests.conftest import build_export_model
from toolkit.core.errors import ExportError
from toolkit.export.config import ExportConfig
from toolkit.export.run import export_model


def test_check_thresholds_fail_but_keep_files(tmp_path):
    src = build_export_model(tmp_path / "llama", "llama")
    with pytest.raises(ExportError, match="files kept"):
        export_model(str(src), tmp_path / "out",
                     ExportConfig(format="gguf", quant="q8_0", threads=1, check=True, min_token_agreement=1.01))
    saved = json.loads((tmp_path / "out" / "export.json").read_text())
    assert saved["passed"] is False and saved["parity"]["thresholds"]["min_token_agreement"] == 1.01
    assert (tmp_path / "out" / "model-q8_0.gguf").stat().st_size == saved["files"][0]["bytes"]


@pytest.mark.parametrize("chat", [True, False])
def test_parity_asks_the_questions_as_the_export_will_be_asked(tmp_path, chat):
    """The greedy comparison runs on the prompt rule's text (system instruction, the student's strategies, chat
    or plain format), the text every runtime of the export is asked with, not on the question alone."""
    from transformers import AutoTokenizer

    from tests.conftest import drop_chat_template
    from toolkit.data.prompt_rule import prompt_record, render
    from toolkit.data.strategies import training_prompt
    from toolkit.export.parity import PROMPTS, Reference

    src = build_export_model(tmp_path / "llama", "llama")
    if not chat:
        drop_chat_template(src)
    record = prompt_record(["cot", "pot"], chat=chat)
    ref = Reference(src, 1, 4, record)
    tok = AutoTokenizer.from_pretrained(src)
    asked = [tok.decode(ids) for ids in ref.prompt_ids]
    assert asked == [render(tok, training_prompt(q, ["cot", "pot"]))[0] for q in PROMPTS]
    assert all(record["system"] in text for text in asked) and all(q in ref.texts for q in PROMPTS)

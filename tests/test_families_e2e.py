"""Each student family goes the whole way through the CLI: `toolkit distill` trains it, exports it as a GGUF,
scores the export in llama.cpp and packs a bundle whose GGUF stops where the family's turn ends and whose
runner asks as training did. The tiny llama (SmolLM2's shape) is test_deploy's; these are the other shapes users
bring: Qwen2.5 (qwen2: q/k/v biases, tied head, ChatML's <|im_end|>), Llama-3.2 (three end tokens in the config,
<|eot_id|> ending a turn) and Gemma 3 (four norms per layer, query/key norms, query_pre_attn_scalar unlike its
head size, <end_of_turn>)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import build_export_model, build_turn_model, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.data.prompt_rule import render
from toolkit.data.strategies import training_prompt
from toolkit.eval.safetar import safe_extract

DEPLOY = """\
deploy:
  formats: [{format: gguf, quant: q8_0}]
  max_accuracy_drop: 100
  bench: {prompt_tokens: 8, gen_tokens: 8, reps: 1, warmup: 0, threads: 1, allow_busy: true}
"""
# family: (how its tiny model is built, the token that ends its assistant turn)
FAMILIES = {"qwen2": (lambda path: build_export_model(path, "qwen2"), "<|im_end|>"),
            "llama3": (lambda path: build_turn_model(path, "llama3"), "<|eot_id|>"),
            "gemma3": (lambda path: build_turn_model(path, "gemma3"), "<end_of_turn>")}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_distills_exports_scores_and_bundles_through_the_cli(tmp_path, family):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    build, end_of_turn = FAMILIES[family]
    student = build(tmp_path / f"tiny-{family}")
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = write_tiny_recipe(tmp_path, student, srv.base_url)
        recipe.write_text(recipe.read_text() + DEPLOY)
        r = toolkit("distill", str(recipe), cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(stages[f"deploy/gguf-q8_0/{step}"]["status"] == "done" for step in ("export", "eval", "bench"))
    doc = json.loads((run / "deploy" / "deploy.json").read_text())
    (row,) = doc["rows"]
    assert row["error"] is None and row["n"] == 2 and row["decode_tok_s"] > 0

    # The GGUF's end token is the end of a turn, so llama.cpp stops where the student learned to stop.
    tok = AutoTokenizer.from_pretrained(run / "round-0" / "student")
    gguf = GGUFReader(row["path"])
    eos = int(gguf.fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    assert tok.convert_ids_to_tokens(eos) == end_of_turn == tok.eos_token

    # The bundle's runner asks the question exactly as the round's eval did.
    bundle = doc["pick"]["bundle"]
    safe_extract(bundle, tmp_path / "unpacked")  # tarfile's filter= is not in Debian's python 3.11.2
    (folder,) = (tmp_path / "unpacked").iterdir()
    question = "Tom has 3 apples and buys 5 more. How many apples does he have?"
    shown = subprocess.run([sys.executable, "-I", str(folder / "run.py"), question, "--print-prompt"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.rstrip("\n") == render(tok, training_prompt(question, ["cot"]))[0].rstrip("\n")

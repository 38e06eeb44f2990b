"""Model cards (export/model_card.py) from a run folder built the way the pipeline writes one: the recipe's own
dump in manifest.json, rounds.json from write_round_report, and a deploy.json of the contract's shape whose
paired figures come from the same comparison code; the front matter must parse as a Hugging Face card."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from tests.conftest import build_export_model, build_tiny_tokenizer, drop_chat_template
from toolkit.core.errors import ToolkitError
from toolkit.core.jsonio import atomic_write_json, atomic_write_jsonl, read_jsonl
from toolkit.core.recipe import Recipe, load_recipe
from toolkit.core.rundir import RUN_KIND
from toolkit.core.stats import wilson_of_rate
from toolkit.data.prompt_rule import PROMPT_FILE, prompt_record
from toolkit.eval.rounds_report import SAMPLES, compare, write_round_report
from toolkit.eval.safetar import safe_extract
from toolkit.export.bundle import write_bundle
from toolkit.export.config import ExportConfig
from toolkit.export.model_card import run_card, write_card
from toolkit.export.run import export_model

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
N = 40
IDS = [f"gsm8k-{i}" for i in range(N)]


def _samples(folder: Path, right: set[int]) -> dict:
    """An eval's per-sample file (problems `right` solved) and its manifest record, as evaluate_student keeps it."""
    out = folder / "results.json"
    atomic_write_jsonl(folder / SAMPLES, [{"id": pid, "strict_match": i in right, "flexible_extract": i in right}
                                          for i, pid in enumerate(IDS)])
    return {"n": N, "strict_match": len(right) / N, "flexible_extract": len(right) / N, "results": str(out)}


def _scores(folder: Path) -> dict[str, bool]:
    return {r["id"]: r["strict_match"] for r in read_jsonl(folder / SAMPLES)}


def _export_row(run: Path, name: str, right: set[int], size: int, tok_s: float) -> dict:
    fmt, quant = name.split("-", 1)
    rec = _samples(run / "deploy" / name / "eval", right)
    paired = compare(name, _scores(run / "deploy" / name / "eval"), "round-1", _scores(run / "round-1" / "eval"))
    return {"name": name, "format": fmt, "quant": quant, "path": str(run / "deploy" / name / "model"),
            "size_bytes": size, "parity": {"passed": True, "first_token_match": 1.0, "token_agreement": 0.98},
            "n": N, "strict_match": rec["strict_match"], "strict_ci95": list(wilson_of_rate(rec["strict_match"], N)),
            "flexible_extract": rec["flexible_extract"], "paired": paired,
            "drop_upper_points": -100 * paired["ci95"][0], "within_drop": -100 * paired["ci95"][0] <= 5.0,
            "decode_tok_s": tok_s, "prefill_tok_s": 10 * tok_s, "ttft_ms": 70.3, "decode_ms_p50": 1000 / tok_s,
            "decode_ms_p99": 1500 / tok_s, "peak_rss_bytes": 3 * size, "roofline_ratio": 0.6, "threads": 2,
            "bench": str(run / "deploy" / name / "bench.json"), "error": None}


def _run(tmp_path: Path, *overrides: str, deploy: bool = True) -> Path:
    # The calculator as each test says, not as the shipped quickstart happens to set it.
    recipe = load_recipe(QUICKSTART, ["eval.calculator=false", *overrides])
    run = tmp_path / "runs" / recipe.name
    rounds = {"base": _samples(run / "eval-base", set()),
              "round-0": _samples(run / "round-0" / "eval", {0, 1}),
              "round-1": _samples(run / "round-1" / "eval", {0, 1, 2})}
    if recipe.eval.calculator == "both":  # each eval again without the calculator, into <eval>/no-calculator/
        for name, folder in (("base", "eval-base"), ("round-0", "round-0/eval"), ("round-1", "round-1/eval")):
            plain = _samples(run / folder / "no-calculator", {0} if name == "round-1" else set())
            rounds[name].update(strict_match_no_calculator=plain["strict_match"],
                                flexible_extract_no_calculator=plain["flexible_extract"],
                                results_no_calculator=plain["results"])
    for name, (problems, rationales) in {"base": (0, 0), "round-0": (30, 24), "round-1": (41, 35)}.items():
        rounds[name].update(problems=problems, rationales=rationales)
    for k in (0, 1):  # each student folder with the prompt rule it was trained by
        student = run / f"round-{k}" / "student"
        student.mkdir(parents=True)
        atomic_write_json(student / PROMPT_FILE, prompt_record(recipe.distill.strategies, chat=True))
    stages = {"eval/base": dict(rounds["base"], status="done", seconds=75.3)}
    stages |= {f"round-{k}/eval": dict(rounds[f"round-{k}"], status="done", seconds=60.0) for k in (0, 1)}
    manifest = {"kind": RUN_KIND, "recipe_sha256": recipe.digest(), "recipe": recipe.model_dump(mode="json"),
                "seed": recipe.seed, "created": "2026-12-03T05:24:08+0000", "stages": stages,
                "summary": {"rounds": rounds, "student": str(run / "round-1" / "student")}}
    write_round_report(run, rounds)
    if deploy:
        settings = {"formats": [{"format": "gguf", "quant": "q8_0"}, {"format": "genai", "quant": "int4"},
                                {"format": "onnx", "quant": "int8"}],
                    "heldout": None, "max_accuracy_drop": 5.0, "pick": "smallest", "bundle": True,
                    "bench": {"prompt_tokens": 64, "gen_tokens": 64, "reps": 3}, "remote": None}
        manifest["deploy"] = {"settings": settings}
        rows = [_export_row(run, "gguf-q8_0", {0, 1, 2}, 145_000_000, 80.1),
                _export_row(run, "genai-int4", {0, 1}, 120_000_000, 95.5),
                {"name": "onnx-int8", "format": "onnx", "quant": "int8", "path": None, "size_bytes": None,
                 "parity": None, "n": None, "strict_match": None, "strict_ci95": None, "flexible_extract": None,
                 "paired": None, "drop_upper_points": None, "within_drop": False, "decode_tok_s": None,
                 "prefill_tok_s": None, "ttft_ms": None, "decode_ms_p50": None, "decode_ms_p99": None,
                 "peak_rss_bytes": None, "roofline_ratio": None, "threads": None, "bench": None,
                 "error": "onnx export failed: out of memory"}]
        ref = rounds["round-1"]
        atomic_write_json(run / "deploy" / "deploy.json", {
            "student": str(run / "round-1" / "student"),
            "reference": {"model": "round-1", "format": "torch", "quant": "fp32", "n": N,
                          "strict_match": ref["strict_match"],
                          "strict_ci95": list(wilson_of_rate(ref["strict_match"], N)), "results": ref["results"]},
            "calculator": False, "rows": rows,
            "pick": {"rule": "smallest", "max_accuracy_drop": 5.0, "chosen": "gguf-q8_0",
                     "reason": "smallest of 1 export whose drop stays within 5 points (upper end of the paired 95% "
                               "interval)",
                     "bundle": str(run / "deploy" / "gguf-q8_0" / "model" / "round-1-gguf-q8_0.tar.gz")}})
    atomic_write_json(run / "manifest.json", manifest)
    return run


def _front(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def _recipe_block(text: str) -> dict:
    return yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])


def test_final_student_card_parses_as_a_hub_card_with_every_export(tmp_path):
    run = _run(tmp_path, "data.train.suite=gsm8k")
    text = run_card(run, run / "round-1" / "student")
    data = ModelCard(text).data  # huggingface_hub's own parser: a model-index it cannot read raises here
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.license == "apache-2.0" and data.datasets == ["openai/gsm8k"]
    assert data.pipeline_tag == "text-generation" and data.library_name == "transformers"
    assert {"math", "distillation", "toolkit", "gguf", "onnx"} <= set(data.tags)
    assert data.model_name == "quickstart-round-1"
    got = [(r.metric_name, r.metric_value, r.dataset_name, r.dataset_type, r.task_type) for r in data.eval_results]
    dataset = ("held-out gsm8k (n=40)", "openai/gsm8k", "text-generation")
    # 3 of 40 right in round 1 and in the q8_0 GGUF, 2 of 40 in the int4 genai export; the failed export has none
    assert got == [("held-out strict accuracy, % (round-1 torch)", 7.5, *dataset),
                   ("held-out strict accuracy, % (gguf q8_0)", 7.5, *dataset),
                   ("held-out strict accuracy, % (genai int4)", 5.0, *dataset)]
    body = text.split("---\n", 2)[2]
    for line in ("| round-0 | 40 | 5.0% (1.4%–16.5%) | 5.0% | 30 | 24 |",  # the rounds table, from rounds.json
                 "| round-1 | 40 | 7.5% (2.6%–19.9%) | 7.5% | 41 | 35 |",
                 "| round-1 | round-0 | 40 | +2.5 (+0.0 to +7.5) | 1 | 0 | 1 |",  # its paired comparison
                 "| gguf-q8_0 | 145.0 MB | 40 | 7.5% (2.6%–19.9%) | +0.0 (+0.0 to +0.0) | 1 | 80.1 | 801.0 | 70.3 "
                 "| yes | **yes** |",
                 "| genai-int4 | 120.0 MB | 40 | 5.0% (1.4%–16.5%) | -2.5 (-7.5 to +0.0) | 1 | 95.5 | 955.0 | 70.3 "
                 "| no | no |",
                 "| onnx-int8 | failed: onnx export failed: out of memory |",
                 "Picked: **gguf-q8_0**", "`round-1-gguf-q8_0.tar.gz`",
                 f"sha256 `{yaml.safe_load((run / 'manifest.json').read_text())['recipe_sha256'][:12]}`",
                 "toolkit distill quickstart.yaml", "without the calculator"):
        assert line in body, line
    # The reproduce block is the run's recipe: it validates and has the digest the manifest recorded.
    block = _recipe_block(text)
    assert block.pop("deploy")["formats"][0] == {"format": "gguf", "quant": "q8_0"}
    manifest = yaml.safe_load((run / "manifest.json").read_text())
    assert Recipe.model_validate(block).digest() == manifest["recipe_sha256"]


def test_card_without_deploy_and_of_an_earlier_round(tmp_path):
    run = _run(tmp_path, deploy=False)  # the quickstart as written: multiarith, no hub dataset id
    text = run_card(run, run / "round-1" / "student")
    data = ModelCard(text).data
    assert data.datasets is None and data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert [(r.metric_value, r.dataset_name, r.dataset_type) for r in data.eval_results] == [
        (7.5, "held-out multiarith (n=40)", "multiarith")]
    assert "gguf" not in data.tags and "## Exports" not in text and "| round-1 | 40 |" in text
    # Round 0's card names its own accuracy, and the exports of the final student stay off it.
    run2 = _run(tmp_path / "with-deploy")
    text = run_card(run2, run2 / "round-0" / "student")
    data = ModelCard(text).data
    assert [r.metric_value for r in data.eval_results] == [5.0] and "## Exports" not in text
    assert "the run's final student is round-1" in text


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_how_to_use_asks_by_the_students_prompt_rule(tmp_path, chat):
    """The card's transformers snippet, run against the student folder, builds the token ids the eval gives it:
    the system prompt through the chat template, or the plain format for a student without one (its prompt.json)."""
    from toolkit.data.prompt_rule import render
    from toolkit.eval.prompts import build_messages

    run = _run(tmp_path, deploy=False)
    student = run / "round-1" / "student"
    tok = build_tiny_tokenizer(student)
    if not chat:
        drop_chat_template(student)
        tok.chat_template = None
    atomic_write_json(student / PROMPT_FILE, prompt_record(["cot"], chat))
    code = run_card(run, student).split("```python\n", 1)[1].split("```", 1)[0]
    assert ("apply_chat_template" in code) == chat
    # the snippet up to its ids, with the model left out (the folder holds only a tokenizer)
    snippet = [line.replace('"."', repr(str(student))) for line in code.splitlines()
               if "AutoModelForCausalLM.from_pretrained" not in line and not line.startswith(("out =", "print("))]
    scope: dict = {}
    exec("\n".join(snippet), scope)
    expected = render(tok, build_messages(scope["question"], "cot"))[0]
    assert scope["ids"][0].tolist() == tok(expected, add_special_tokens=False)["input_ids"]


def test_calculator_both_gives_the_checkpoint_a_second_metric(tmp_path):
    run = _run(tmp_path, "eval.calculator=both", deploy=False)
    text = run_card(run, run / "round-1" / "student")
    metrics = [(r.metric_name, r.metric_value) for r in ModelCard(text).data.eval_results]
    assert metrics == [("held-out strict accuracy, % (round-1 torch)", 7.5),
                       ("held-out strict accuracy, % (round-1 torch, no calculator)", 2.5)]
    assert "Calculator on against off" in text and "calculator on, and each eval again with it off" in text
    assert "| round-1 | 40 | +5.0 (" in text  # 3 right with the calculator, 1 without: 2 discordant of 40


@pytest.mark.parametrize("student, base, license", [
    ("google/gemma-3-270m-it", "google/gemma-3-270m-it", "gemma"),  # a hub id stays
    ("pkg:qwen2.5-coder-0.5b-instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "apache-2.0"),
    ("someone/unknown-model", "someone/unknown-model", "other"),
])
def test_base_model_and_license_follow_the_student_reference(tmp_path, student, base, license):
    run = _run(tmp_path, f"student.model={student}", deploy=False)
    data = ModelCard(run_card(run, run / "round-1" / "student")).data
    assert (data.base_model, data.license) == (base, license)


def test_local_student_gives_a_card_without_base_model(tmp_path):
    local = tmp_path / "my" / "student"  # a local folder: nothing says which hub repo it came from
    local.mkdir(parents=True)
    run = _run(tmp_path, f"student.model={local}")
    text = run_card(run, run / "round-1" / "student")
    front = _front(text)
    assert "base_model" not in front and front["license"] == "other"
    assert ModelCard(text).data.eval_results[0].metric_value == 7.5
    assert f"`{local}` (a local model)" in text


def test_write_card_and_bad_student_folder(tmp_path):
    run = _run(tmp_path, deploy=False)
    student = run / "round-1" / "student"
    text = run_card(run, student)
    path = write_card(student, text)
    assert path == student / "README.md" and path.read_text() == text
    assert sorted(p.name for p in student.iterdir()) == ["README.md", PROMPT_FILE]  # no temporary left beside it
    with pytest.raises(ToolkitError, match=r"is not a student folder of run .* one of round-0, round-1"):
        run_card(run, tmp_path / "elsewhere")
    (student / PROMPT_FILE).unlink()
    with pytest.raises(ToolkitError, match="has no prompt.json"):
        run_card(run, student)
    (run / "rounds.json").unlink()
    with pytest.raises(ToolkitError, match="has no rounds.json"):
        run_card(run, student)


def test_bundle_readme_is_the_card_then_how_to_run(tmp_path):
    run = _run(tmp_path)
    card = run_card(run, run / "round-1" / "student")
    out = tmp_path / "out"
    export_model(str(build_export_model(tmp_path / "llama", "llama")), out,
                 ExportConfig(format="gguf", quant="q4_0", threads=1))
    bundle = write_bundle(out, "gguf", "q4_0", "round-1", card=card)
    safe_extract(bundle, tmp_path / "unpacked")
    folder = tmp_path / "unpacked" / "round-1-gguf-q4_0"
    readme = (folder / "README.md").read_text()
    assert readme.startswith(card.rstrip("\n") + "\n\n## round-1-gguf-q4_0\n")
    assert "Raspberry Pi" in readme and "sha256sum -c SHA256SUMS" in readme
    assert ModelCard(readme).data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    sums = dict(reversed(line.split("  ")) for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {p.name for p in folder.iterdir()} - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name

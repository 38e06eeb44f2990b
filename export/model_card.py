"""Hugging Face model cards for a run's distilled students and their exports: YAML front matter (base model,
datasets, license, tags, model-index) and a body with the recipe, the teacher, the rounds, the exports'
held-out accuracy and speed, how to use it, its limits and the command that reproduces it."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from toolkit.core.errors import ToolkitError
from toolkit.core.jsonio import atomic_write_text
from toolkit.runtime.models import ALIASES, PACKAGED, hub_license, origin_hub_id
from toolkit.data.prompt_rule import read_record
from toolkit.data.suites import SUITES
from toolkit.eval.report import paired_cells
from toolkit.eval.rounds_report import calculator_table, markdown_table, paired_table

CARD = "README.md"  # the file name a model hub renders as the card
_TASK = {"type": "text-generation", "name": "Math word problems"}
_FORMAT_TAGS = {"gguf": "gguf", "genai": "onnx", "onnx": "onnx"}
_CALCULATOR = {False: "off", True: "on", "both": "on, and each eval again with it off"}  # eval.calculator


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ToolkitError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ToolkitError(f"{path} is corrupt ({str(exc).splitlines()[0][:120]})") from None


def _suites(source: dict) -> list[str]:
    return [s.strip() for s in source["suite"].split(",")] if source.get("suite") else []


def _source_label(source: dict) -> str:
    """A data source as a reader knows it: the suite name(s), the hub id, or the file name."""
    if source.get("suite"):
        return "+".join(_suites(source))
    if source.get("hf"):
        return source["hf"] + (f"/{source['hf_config']}" if source.get("hf_config") else "") + f"[{source['hf_split']}]"
    return Path(source["path"]).name


def _hub_datasets(source: dict) -> list[str]:
    """Hub dataset ids of a data source, where known (a built-in suite its authors publish there, or hf)."""
    if source.get("hf"):
        return [source["hf"]]
    return [SUITES[s].hub for s in _suites(source) if s in SUITES and SUITES[s].hub]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(rate: float, ci: list[float]) -> str:
    return f"{_pct(rate)} ({_pct(ci[0])}–{_pct(ci[1])})"


def _model_ref(ref: str) -> str:
    """A recipe's model reference for the body: the hub repo it comes from beside a packaged name."""
    hub = origin_hub_id(ref)
    if ref.startswith("pkg:") and hub:
        gguf = PACKAGED[ALIASES.get(ref[4:], ref[4:])].filename
        return f"[{hub}](https://huggingface.co/{hub}) (`{ref}`: {gguf}, shipped in a Python package)"
    return f"[{hub}](https://huggingface.co/{hub})" if hub else f"`{ref}` (a local model)"


def _which(run_root: Path, student_dir: Path, rows: list[dict]) -> str:
    """The round or iteration (`round-K`, `iter-T`) whose student `student_dir` is."""
    try:
        rel = student_dir.resolve().relative_to(run_root.resolve())
    except ValueError:
        rel = None
    names = [r["model"] for r in rows]
    if rel is None or len(rel.parts) != 2 or rel.parts[1] != "student" or rel.parts[0] not in names:
        raise ToolkitError(f"{student_dir} is not a student folder of run {run_root} (expected "
                           f"{run_root}/<round>/student with <round> one of {', '.join(names[1:]) or 'none yet'})")
    return rel.parts[0]


def _deploy(run_root: Path, which: str) -> dict | None:
    """deploy/deploy.json when its exports were made from this card's student, else None."""
    path = run_root / "deploy" / "deploy.json"
    if not path.is_file():
        return None
    deploy = _read_json(path)
    return deploy if Path(deploy["student"]).parent.name == which else None


def _metric(label: str, rate: float) -> dict:
    return {"type": "accuracy", "value": round(100 * rate, 2), "name": f"held-out strict accuracy, % ({label})"}


def _result(dataset: dict, label: str, rate: float) -> dict:
    return {"task": dict(_TASK), "dataset": dict(dataset), "metrics": [_metric(label, rate)]}


def _front_matter(recipe: dict, model_name: str, row: dict, deploy: dict | None) -> str:
    data = recipe["data"]
    heldout = data["heldout"] or data["train"]  # absent: held-out problems are split off the training source
    held_hub = _hub_datasets(heldout)
    label = _source_label(heldout)

    def dataset(n: int) -> dict:
        return {"name": f"held-out {label} (n={n})", "type": held_hub[0] if len(held_hub) == 1 else label}

    results = [_result(dataset(row["n"]), f"{row['model']} torch", row["strict_match"])]
    if "strict_match_no_calculator" in row:  # eval.calculator both: the same checkpoint decoded without it
        plain = _metric(f"{row['model']} torch, no calculator", row["strict_match_no_calculator"])
        results[0]["metrics"].append(plain)
    tags = ["math", "distillation", "toolkit"]
    for r in (deploy or {}).get("rows", []):
        if r.get("error") is None and r.get("strict_match") is not None:
            results.append(_result(dataset(r["n"]), f"{r['format']} {r['quant']}", r["strict_match"]))
            tag = _FORMAT_TAGS.get(r["format"], r["format"])
            if tag not in tags:
                tags.append(tag)
    base = origin_hub_id(recipe["student"]["model"])
    meta: dict = {}
    if base:
        meta["base_model"] = base
    datasets = sorted(set(_hub_datasets(data["train"])))
    if datasets:
        meta["datasets"] = datasets
    meta["license"] = (hub_license(base) if base else None) or "other"
    meta.update({"tags": tags, "pipeline_tag": "text-generation", "library_name": "transformers",
                 "model-index": [{"name": model_name, "results": results}]})
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def _exports_table(deploy: dict) -> list[str]:
    ref = deploy["reference"]
    lines = ["| model | size | held-out n | strict match (95% CI) | vs the torch student, points (95% CI) | "
             "McNemar p | decode tok/s | prefill tok/s | TTFT, ms | within the drop limit | picked |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
             f"| {ref['model']} torch {ref['quant']} (the student folder) | – | {ref['n']} | "
             f"{_ci(ref['strict_match'], ref['strict_ci95'])} | – | – | – | – | – | – | – |"]
    chosen = deploy["pick"].get("chosen")
    for r in deploy["rows"]:
        if r.get("error"):
            lines.append(f"| {r['name']} | failed: {r['error']} | – | – | – | – | – | – | – | no | no |")
            continue
        diff, mcnemar = paired_cells(r)
        speed = [f"{r[k]:.1f}" if r.get(k) is not None else "–" for k in ("decode_tok_s", "prefill_tok_s", "ttft_ms")]
        lines.append(f"| {r['name']} | {r['size_bytes'] / 1e6:.1f} MB | {r['n']} | "
                     f"{_ci(r['strict_match'], r['strict_ci95'])} | {diff} | {mcnemar} | {' | '.join(speed)} | "
                     f"{'yes' if r['within_drop'] else 'no'} | {'**yes**' if r['name'] == chosen else 'no'} |")
    return lines


def _asking(prompt: dict) -> list[str]:
    """Python lines that build `ids` for `question` by the student's prompt rule (its prompt.json)."""
    system = json.dumps(prompt["system"])
    if prompt["format"] == "chat":
        return [f"messages = [{{\"role\": \"system\", \"content\": {system}}},",
                '            {"role": "user", "content": question}]',
                'ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")']
    return ["# no chat template: the plain format it was trained on (the reply follows after a space)",
            f"prompt = {json.dumps(prompt['plain_template'])}.format(",
            f"    system={system}, question=question.strip())",
            'ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids']


def _usage(recipe: dict, deploy: dict | None, prompt: dict) -> list[str]:
    max_new = recipe["eval"]["max_new_tokens"]
    lines = ["## How to use", "",
             "With transformers, from the student folder (whose README.md this card is) or the hub repo it was "
             "pushed to, asked exactly as the student was trained and evaluated (the rule is in its `prompt.json`: "
             + ("the system prompt and the question through the chat template" if prompt["format"] == "chat" else
                "its tokenizer has no chat template, so the system text and the question in a plain format")
             + "):", "",
             "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "",
             'path = "."  # the student folder, or the hub repo id it was pushed to',
             "tok = AutoTokenizer.from_pretrained(path)",
             "model = AutoModelForCausalLM.from_pretrained(path)",
             'question = "Tom has 3 apples and buys 5 more. How many does he have?"',
             *_asking(prompt),
             f"out = model.generate(ids, max_new_tokens={max_new}, do_sample=False)",
             "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))",
             "```", ""]
    if prompt["tags"]:
        tags = ", ".join(f"`{json.dumps(t)[1:-1]}`" for t in prompt["tags"].values())
        lines += ["The student begins its reply with the tag of the strategy it picks; to make it use one, append "
                  f"that tag to the prompt text ({tags})"
                  + (" after a space" if prompt["format"] == "plain" else "") + ".", ""]
    lines.append("To score it on a suite: `toolkit eval PATH --suite gsm8k` (strict and flexible answer extraction, "
                 "with 95% intervals).")
    if "pot" in recipe["distill"]["strategies"]:
        lines += ["", "A reply tagged `[pot]` is a Python program: its answer is the variable `answer` after "
                      "running it (toolkit runs it in a sandbox)."]
    if deploy:
        formats = {r["format"] for r in deploy["rows"] if not r.get("error")}
        lines += ["", "The exports above run without torch:"]
        if "gguf" in formats:
            lines.append("- GGUF: llama.cpp (`llama-cli -m FILE.gguf`) or llama-cpp-python "
                         + ("(`Llama(\"FILE.gguf\").create_chat_completion(messages)`, the messages above)."
                            if prompt["format"] == "chat" else
                            "(`Llama(\"FILE.gguf\").create_completion(prompt, stop=[\"\\nQuestion:\"])`, the "
                            "prompt above)."))
        if "genai" in formats:
            lines.append("- genai: onnxruntime-genai (`og.Model(FOLDER)`), with the same "
                         + ("messages through `og.Tokenizer(model).apply_chat_template`." if prompt["format"] == "chat"
                            else "prompt."))
        if "onnx" in formats:
            lines.append("- onnx: optimum's `ORTModelForCausalLM.from_pretrained(FOLDER)` on onnxruntime.")
        bundle = deploy["pick"].get("bundle")
        if bundle:
            lines.append(f"- `{Path(bundle).name}`: the picked export as an edge bundle, with a runtime-only "
                         f"`run.py` that asks by the same `prompt.json`, the calculator and SHA256SUMS; its README "
                         f"says how to run it on a Raspberry Pi, an Android phone (Termux) or a laptop.")
    return lines


def _limitations(recipe: dict, row: dict, train_label: str) -> list[str]:
    n = row["n"]
    lo, hi = row["strict_ci95"]
    calc = recipe["eval"]["calculator"]
    lines = ["## Limitations", "",
             f"- Held-out accuracy comes from n = {n} problems. The 95% interval ({_pct(lo)}–{_pct(hi)} for this "
             f"checkpoint) is the range of true accuracies these {n} answers are consistent with; at this n the "
             f"intervals of two models overlap widely, so whether one beats another is read from the paired "
             f"comparisons on the same problems, not from the intervals.",
             "- A small model makes arithmetic slips inside otherwise sound steps; check its numbers before "
             "relying on them.",
             f"- It was trained on {train_label} word problems in English: it solves grade-school math word "
             f"problems and is no general assistant."]
    if calc:
        lines.append("- These figures were measured with the calculator: while decoding, toolkit computes the "
                     "arithmetic the model writes before `=` and forces the result. Plain `generate` (above) has "
                     "no calculator"
                     + (" (the \"no calculator\" figures)" if calc == "both" else " and does worse")
                     + "; the edge bundle's `run.py` has it.")
    else:
        lines.append("- These figures were measured without the calculator (the model's own arithmetic); the "
                     "edge bundle's `run.py` adds one that computes what the model writes before `=`.")
    return lines


def _data_lines(recipe: dict) -> list[str]:
    data = recipe["data"]
    lines = []
    for role, src, size in (("training", data["train"], data["train_size"]),
                            ("held-out", data["heldout"], data["heldout_size"])):
        if role == "held-out" and src is None:
            lines.append(f"- held-out data: {size} problems split off the training source (disjoint from it)")
            continue
        licenses = [f"{s}: license {SUITES[s].license or 'not stated'}" for s in _suites(src) if s in SUITES]
        lines.append(f"- {role} data: {size} problems from {_source_label(src)}"
                     + (f" ({'; '.join(licenses)})" if licenses else ""))
    return lines


def run_card(run_root: Path, student_dir: Path) -> str:
    """The model card (README.md text) of `student_dir`, a `round-K/student` or `iter-T/student` folder of the
    run at `run_root`: from its manifest.json, rounds.json and, for the run's final student, deploy/deploy.json."""
    run_root, student_dir = Path(run_root), Path(student_dir)
    for need in ("manifest.json", "rounds.json"):
        if not (run_root / need).is_file():
            raise ToolkitError(f"{run_root} has no {need}: a model card is written once the run's rounds are "
                               f"evaluated")
    manifest = _read_json(run_root / "manifest.json")
    rows = _read_json(run_root / "rounds.json")
    recipe = manifest["recipe"]
    which = _which(run_root, student_dir, rows)
    row = next(r for r in rows if r["model"] == which)
    base_row = rows[0]
    deploy = _deploy(run_root, which)
    name = f"{recipe['name']}-{which}"
    distill, train, teacher = recipe["distill"], recipe["train"], recipe["teacher"]
    train_label = _source_label(recipe["data"]["train"])
    sg = distill.get("self_guided")
    final = Path(manifest.get("summary", {}).get("student", "")).parent.name

    body = [f"# {name}", "",
            f"A math word-problem student distilled by `toolkit distill` from the teacher "
            f"{_model_ref(teacher['model'])} into {_model_ref(recipe['student']['model'])}: the student of "
            f"{which}"
            + (", the run's final one." if final in ("", which) else f" (the run's final student is {final}).")
            + f" Held-out strict accuracy {_ci(row['strict_match'], row['strict_ci95'])} on {row['n']} problems, "
              f"against {_ci(base_row['strict_match'], base_row['strict_ci95'])} for the base model.", "",
            "## Recipe", "",
            f"- recipe `{recipe['name']}`, sha256 `{manifest['recipe_sha256'][:12]}`, seed {recipe['seed']}",
            f"- method: {distill['rounds']} feedback-driven distillation round(s) (each later round grows the "
            f"training set from the previous student's mistakes and successes)"
            + (f", then {sg['iterations']} self-guided iteration(s) (the student's own correct solutions mixed "
               f"with the teacher's)" if sg else "")
            + f"; strategies: {', '.join(distill['strategies'])}",
            *_data_lines(recipe),
            f"- fine-tuning: every round starts again from the base, "
            + (f"LoRA rank {train['lora']}" if train.get("lora") else "all weights")
            + f", {train['max_steps'] or train['epochs']} {'steps' if train['max_steps'] else 'epochs'}, "
              f"lr {train['lr']}, batch {train['batch_size']} × {train['seq_len']} tokens",
            f"- evaluation: greedy, at most {recipe['eval']['max_new_tokens']} new tokens, "
            f"calculator {_CALCULATOR[recipe['eval']['calculator']]}", "",
            "## Teacher", "",
            f"{_model_ref(teacher['model'])} through {teacher['backend']}: {distill['paths_per_problem']} "
            f"solution(s) per problem and strategy at temperature {teacher['temperature']}, at most "
            f"{teacher['max_tokens']} tokens each. A solution is kept when its final answer matches the gold "
            f"answer (for the problems the teacher writes in later rounds: the majority answer of its "
            f"{distill['label_solves']} solutions).", "",
            "## Rounds", "",
            "Held-out strict match (the answer on the model's last \"The answer is N.\" line) with its 95% "
            "Wilson interval, per model; training problems and rationales each round trained on.", "",
            markdown_table(rows).rstrip("\n")]
    body += [table.rstrip("\n") for table in (paired_table(rows), calculator_table(rows)) if table]
    if deploy:
        pick = deploy["pick"]
        threads = sorted({r["threads"] for r in deploy["rows"] if r.get("threads")})
        body += ["", "## Exports", "",
                 f"Each export answered the same held-out problems in its own runtime"
                 f"{' with the calculator' if deploy.get('calculator') else ''}, paired against the "
                 f"torch student it was exported from; speed is measured by `toolkit bench` on this run's machine"
                 + (f" ({'/'.join(map(str, threads))} CPU threads)" if threads else "")
                 + f". The pick: the {pick['rule']} export "
                 f"whose accuracy drop (upper end of the paired 95% interval) stays within "
                 f"{pick['max_accuracy_drop']} points.", "",
                 *_exports_table(deploy), "",
                 f"Picked: **{pick['chosen']}**, {pick['reason']}." if pick.get("chosen")
                 else f"No export picked: {pick['reason']}."]
    prompt = read_record(student_dir)
    if prompt is None:
        raise ToolkitError(f"{student_dir} has no prompt.json (how the student is asked): resume the run with "
                           f"`toolkit distill`, which writes it")
    body += ["", *_usage(recipe, deploy, prompt), "", *_limitations(recipe, row, train_label), "",
             "## Reproduce", "",
             f"With toolkit installed, save this recipe as `{recipe['name']}.yaml` (`data.root` is relative to "
             f"that file; `$TOOLKIT_DATA` overrides it) and run `toolkit distill {recipe['name']}.yaml`.", "",
             "<details><summary>the recipe, as the run resolved it</summary>", "",
             "```yaml", _recipe_yaml(recipe, manifest).rstrip("\n"), "```", "", "</details>", ""]
    return _front_matter(recipe, name, row, deploy) + "\n" + "\n".join(body)


def _recipe_yaml(recipe: dict, manifest: dict) -> str:
    """The recipe as the run resolved it, with its deploy section (kept out of the digest) when it had one."""
    settings = manifest.get("deploy", {}).get("settings")
    return yaml.safe_dump(recipe | ({"deploy": settings} if settings else {}), sort_keys=False, allow_unicode=True)


def write_card(folder: Path, text: str) -> Path:
    """folder/README.md holding `text`, written atomically; returns its path."""
    path = Path(folder) / CARD
    atomic_write_text(path, text)
    return path

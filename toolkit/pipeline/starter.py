"""`toolkit init`: a commented starter recipe from a problem file and a teacher, checked before it is written."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from toolkit.core.errors import RecipeError
from toolkit.core.jsonio import atomic_write_text
from toolkit.core.recipe import load_recipe
from toolkit.data.problems import load_file

PACKAGED_TEACHER = "pkg:qwen2.5-coder-0.5b-instruct"
PACKAGED_STUDENT = "pkg:smollm2-135m-instruct"
HELDOUT_SHARE = 0.2  # of the problems, kept apart to score the students (at least 1)


def _q(value: str) -> str:
    """A YAML scalar for any text (a JSON string is one): paths with spaces or colons stay intact."""
    return json.dumps(value)


def _teacher_lines(url: str | None, model: str | None, key_env: str, packaged: str) -> list[str]:
    if url:
        if not model:
            raise RecipeError("--teacher-url needs --teacher-model: the model name the endpoint serves")
        return ["teacher:                          # any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp)",
                "  backend: openai",
                f"  base_url: {_q(url)}",
                f"  model: {_q(model)}",
                f"  api_key_env: {key_env}            # the key is read from this environment variable, never "
                "from a recipe",
                "  temperature: 0.7",
                "  max_tokens: 256                 # the longest rationale, in tokens"]
    return ["teacher:                          # a packaged GGUF served by llama.cpp on 127.0.0.1 (no key, no network)",
            "  backend: llama.cpp",
            f"  model: {_q(packaged)}",
            "  temperature: 0.7",
            "  max_tokens: 256                 # the longest rationale, in tokens",
            "# Your own teacher instead (toolkit init --teacher-url URL --teacher-model NAME --api-key-env VAR):",
            "# teacher:",
            "#   backend: openai",
            '#   base_url: "http://127.0.0.1:8000/v1"   # any OpenAI-compatible endpoint',
            '#   model: "the-served-model-name"',
            "#   api_key_env: OPENAI_API_KEY            # the variable that holds the key, never the key"]


def starter_text(problems: Path, out: Path, *, question_field: str = "question", answer_field: str = "answer",
                 teacher_url: str | None = None, teacher_model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", teacher: str = PACKAGED_TEACHER,
                 student: str = PACKAGED_STUDENT, name: str | None = None, output_dir: str = "runs") -> str:
    """The recipe's text; the problem file is read first, so a bad line is reported before anything is written."""
    loaded = load_file(problems, question_field=question_field, answer_field=answer_field)
    if len(loaded) < 2:
        raise RecipeError(f"{problems}: {len(loaded)} problem; a run needs at least 2 (one to train, one to score)")
    heldout = max(1, round(len(loaded) * HELDOUT_SHARE))
    # Relative to the recipe's folder, as the recipe reads it, so that the two can move together.
    rel = Path(os.path.relpath(problems.resolve(), out.resolve().parent))
    fields = "" if (question_field, answer_field) == ("question", "answer") else \
        f", question_field: {_q(question_field)}, answer_field: {_q(answer_field)}"
    lines = [
        f"# Starter recipe written by `toolkit init` for {problems.name} ({len(loaded)} problems).",
        f"# Run it with:  toolkit distill {out.name}   (--dry-run first shows the plan and the teacher's cost)",
        "# Every field: docs/recipe.md, or `toolkit recipe explain FIELD`.",
        f"name: {_q(name or problems.stem)}",
        "seed: 0",
        f"output_dir: {_q(output_dir)}               # the run folder is <output_dir>/<name>/",
        "",
        "data:                             # the problem file is relative to this file; an `id` field names each",
        f"  train: {{path: {_q(str(rel))}{fields}}}",
        f"  train_size: {len(loaded) - heldout}                  # problems the teacher solves and the student learns",
        f"  heldout_size: {heldout}                 # problems kept apart (never trained on) to score each student",
        "",
        *_teacher_lines(teacher_url, teacher_model, api_key_env, teacher),
        "",
        "student:",
        f"  model: {_q(student)}   # a packaged model, a hub id or a local folder / .gguf",
        "",
        "distill:",
        "  rounds: 1                       # 2 or more adds FDD rounds of teacher-written problems",
        "  paths_per_problem: 2            # rationales per problem; those that end in the gold answer are kept",
        "",
        "train:",
        "  epochs: 3",
        "  batch_size: 4",
        "  seq_len: 512                    # tokens per packed training sequence",
        "  lr: 1.0e-4",
        "",
        "eval:",
        "  max_new_tokens: 128             # the longest answer a student writes when it is scored",
        "",
        "# deploy:                         # uncomment to export the final student, score and benchmark each export",
        "#   formats: [{format: gguf, quant: q8_0}]",
        "#   max_accuracy_drop: 15",
        "",
    ]
    return "\n".join(lines)


def write_starter(problems: str | Path, out: str | Path, force: bool = False, **options) -> Path:
    """Write the starter recipe to `out` once it loads as a recipe (never over an existing file unless `force`)."""
    problems, out = Path(problems), Path(out)
    if out.exists() and not force:
        raise RecipeError(f"{out} exists; choose another --out or pass --force to replace it")
    text = starter_text(problems, out, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Checked where it will live (relative paths resolve from there) before it replaces anything.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=out.parent, delete=False) as tmp:
        tmp.write(text)
    try:
        load_recipe(tmp.name)
    finally:
        os.unlink(tmp.name)
    atomic_write_text(out, text)
    return out

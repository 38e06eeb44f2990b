"""Edge bundle: a .tar.gz with the model, its tokenizer and prompt rule, a runtime-only runner, SHA256SUMS, a README."""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from toolkit.data import calculator
from toolkit.data.prompt_rule import PROMPT_FILE
from toolkit.core.errors import ExportError
from toolkit.export.manifest import MANIFEST, PARTIAL, sha256

# Both runners: the plain format of a model without a chat template (toolkit.data.prompt_rule renders the same
# text), and --print-prompt. Inserted into each runner's source; it holds no braces, which .format() would read.
_PLAIN_PROMPT = '''else:
    prompt = rule["plain_template"].format(system=rule["system"], question=args.question.strip())
    prompt += rule["plain_answer_prefix"] + args.prefix if args.prefix else ""
    stop = rule["plain_stop"]
if args.print_prompt:
    sys.stdout.write(prompt)
    sys.exit(0)'''

# Runners import only the runtime: llama_cpp (GGUF) or onnxruntime_genai (genai folder), never toolkit,
# and the calculator module, which the bundle carries as a copy of toolkit/data/calculator.py.
_GGUF_RUNNER = '''#!/usr/bin/env python3
\"\"\"Answer one question with this GGUF model; needs only llama-cpp-python (pip install llama-cpp-python).

The question is asked as the model was trained and evaluated (prompt.json beside this file; --print-prompt
shows the prompt). The calculator beside this file computes the arithmetic the model writes before '=' and
writes the result for it (--no-calculator: the model alone).\"\"\"
import argparse
import json
import os
import sys
from pathlib import Path

from llama_cpp import Llama

here = Path(__file__).resolve().parent
ap = argparse.ArgumentParser()
ap.add_argument("question", nargs="?", default="What is 12 * 7 - 4?")
ap.add_argument("--max-tokens", type=int, default=256)
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--no-calculator", action="store_true", help="let the model do its own arithmetic")
ap.add_argument("--prefix", default="", help="text the answer starts with (the model continues it), e.g. a "
                "strategy tag of prompt.json's tags")
ap.add_argument("--print-prompt", action="store_true", help="print the prompt the model would get, then exit")
args = ap.parse_args()
rule = json.loads((here / "prompt.json").read_text(encoding="utf-8"))
# flash attention on, as llama.cpp's own tools default to (llama-cpp-python turns it off unless asked)
llm = Llama(str(here / "{model}"), n_ctx=2048, n_threads=args.threads, flash_attn=True, verbose=False,
            vocab_only=args.print_prompt)
sys.path.insert(0, str(here))  # calculator.py ships beside this file (python -I leaves the folder off sys.path)
import calculator as calc  # noqa: E402
# The prompt rule of prompt.json, rendered as create_chat_completion renders it so that a logits processor sees
# every token and a prefix is continued: the system text and the question through the GGUF's chat template, no BOS
# added, its end token as the stop; for a model without a template the plain format, its stop strings.
special = [llm.detokenize([t], special=True).decode(errors="replace") if t != -1 else ""  # -1: the GGUF has none
           for t in (llm.token_eos(), llm.token_bos())]
eos = special[0]
if rule["format"] == "chat":
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    bos = special[1]
    messages = [{{"role": "system", "content": rule["system"]}}, {{"role": "user", "content": args.question}}]
    prompt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token=eos,
                                 bos_token=bos)(messages=messages).prompt + args.prefix
    stop = [eos] if eos else []
{plain_prompt}
ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
seq = calc.Sequence(lambda t: llm.detokenize(t).decode(errors="replace"),
                    lambda text: llm.tokenize(text.encode(), add_bos=False, special=False), args.prefix)


def steer(input_ids, scores):
    for tok in input_ids[len(ids) + len(seq.ids):].tolist():
        seq.push(int(tok))
    return calc.steer(seq, scores)


out = llm.create_completion(ids, max_tokens=args.max_tokens, temperature=0.0, stop=stop,
                            logits_processor=None if args.no_calculator else [steer])
# a result the --max-tokens limit cut off is written whole (a cut "13969" would read as the answer)
print(out["choices"][0]["text"] + ("" if args.no_calculator else seq.unwritten()))
if not args.no_calculator:
    print(f"calculator: {{seq.forced}} result(s) written, {{seq.changed}} differed from the model's", file=sys.stderr)
'''

_GENAI_RUNNER = '''#!/usr/bin/env python3
\"\"\"Answer one question with this ONNX model; needs only onnxruntime-genai (pip install onnxruntime-genai).

The question is asked as the model was trained and evaluated (prompt.json beside this file; --print-prompt
shows the prompt). The calculator beside this file computes the arithmetic the model writes before '=' and
writes the result for it (--no-calculator: the model alone).\"\"\"
import argparse
import json
import sys
from pathlib import Path

import onnxruntime_genai as og

here = Path(__file__).resolve().parent
ap = argparse.ArgumentParser()
ap.add_argument("question", nargs="?", default="What is 12 * 7 - 4?")
ap.add_argument("--max-tokens", type=int, default=256)
ap.add_argument("--no-calculator", action="store_true", help="let the model do its own arithmetic")
ap.add_argument("--prefix", default="", help="text the answer starts with (the model continues it), e.g. a "
                "strategy tag of prompt.json's tags")
ap.add_argument("--print-prompt", action="store_true", help="print the prompt the model would get, then exit")
args = ap.parse_args()
rule = json.loads((here / "prompt.json").read_text(encoding="utf-8"))
model = og.Model(str(here))
tok = og.Tokenizer(model)
# The prompt rule of prompt.json: the system text and the question through the model's chat template with the
# generation prompt, or for a model without a template the plain format (its stop strings cut the answer).
if rule["format"] == "chat":
    messages = [{{"role": "system", "content": rule["system"]}}, {{"role": "user", "content": args.question}}]
    prompt = tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True) + args.prefix
    stop = []
{plain_prompt}
ids = tok.encode(prompt)
params = og.GeneratorParams(model)
params.set_search_options(max_length=len(ids) + args.max_tokens, do_sample=False)
gen = og.Generator(model, params)
gen.append_tokens(ids)
seq = None
if not args.no_calculator:
    sys.path.insert(0, str(here))  # calculator.py ships beside this file (python -I leaves the folder off sys.path)
    import calculator as calc
    seq = calc.Sequence(lambda t: tok.decode(t), lambda text: [int(i) for i in tok.encode(text)], args.prefix)
while not gen.is_done():
    if seq is not None and seq.pending:  # the calculator's step: only its chosen token gets through
        logits = gen.get_logits().copy()
        logits[0, -1] = calc.steer(seq, logits[0, -1])
        gen.set_logits(logits)
    gen.generate_next_token()
    if seq is not None:
        seq.push(int(gen.get_next_tokens()[0]))
# a result the --max-tokens limit cut off is written whole (a cut "13969" would read as the answer)
text = tok.decode(gen.get_sequence(0)[len(ids):]) + (seq.unwritten() if seq is not None else "")
for end in stop:
    text = text.split(end)[0]
print(text)
if seq is not None:
    print(f"calculator: {{seq.forced}} result(s) written, {{seq.changed}} differed from the model's", file=sys.stderr)
'''

_README = """# {name}

{what}, exported by `toolkit export` ({fmt}, {quant}). Check the files, then ask a question
(`calculator.py` computes the arithmetic the model writes before `=`; `--no-calculator` turns it off):

```bash
sha256sum -c SHA256SUMS
python3 run.py "Tom has 3 apples and buys 5 more. How many apples does he have?"
```

| device | install | run |
|---|---|---|
{rows}

`prompt.json` is how the model was asked in training and evaluation (its system text, chat template or plain
format); `run.py` asks the same way (`--print-prompt` shows the prompt). `export.json` records the source model,
the parity checks against it, and the tool versions.
"""

_ROWS = {
    "gguf": [
        ("Raspberry Pi (64-bit Raspberry Pi OS)",
         "`sudo apt install python3-venv cmake build-essential && python3 -m venv ~/llm && ~/llm/bin/pip install llama-cpp-python`",
         "`~/llm/bin/python run.py --threads 4 \"What is 12 * 7?\"`"),
        ("Android phone (Termux)",
         "`pkg install python cmake clang ninja && pip install llama-cpp-python`",
         "`python run.py --threads 4 \"What is 12 * 7?\"`"),
        ("Laptop (Linux, macOS, Windows)", "`pip install llama-cpp-python`", "`python run.py \"What is 12 * 7?\"`"),
    ],
    "genai": [
        ("Raspberry Pi (64-bit OS)", "`python3 -m venv ~/llm && ~/llm/bin/pip install onnxruntime-genai`",
         "`~/llm/bin/python run.py \"What is 12 * 7?\"`"),
        ("Android phone (Termux)", "no onnxruntime-genai wheel for Termux's Python: use the GGUF bundle there, "
         "or the onnxruntime-genai Android (Java/Kotlin) package in an app", "—"),
        ("Laptop (Linux x64, macOS arm64, Windows)", "`pip install onnxruntime-genai`",
         "`python run.py \"What is 12 * 7?\"`"),
    ],
}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def check_bundle_format(fmt: str) -> None:
    if fmt not in _ROWS:
        raise ExportError("--bundle is for --format gguf or genai (their runners need only llama_cpp or "
                          "onnxruntime_genai); an optimum ONNX folder is loaded with optimum or onnxruntime")


def bundle_name(name: str, fmt: str, quant: str) -> str:
    """The bundle's file name; it unpacks into one folder of the same name without `.tar.gz`."""
    return f"{name}-{fmt}-{quant}.tar.gz"


def write_bundle(out: Path, fmt: str, quant: str, name: str, card: str | None = None) -> Path:
    """OUT/<name>-<fmt>-<quant>.tar.gz holding one folder of that name; returns its path. With `card` (a model
    card, toolkit.export.model_card), the bundle's README.md is that card followed by the how-to-run section."""
    check_bundle_format(fmt)
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != PARTIAL and not p.name.endswith(".tar.gz"))
    if fmt == "gguf":
        model = next(p.name for p in files if p.suffix == ".gguf")
        files = [p for p in files if p.suffix == ".gguf" or p.name in (MANIFEST, PROMPT_FILE)]
        runner, what = _GGUF_RUNNER.format(model=model, plain_prompt=_PLAIN_PROMPT), "A GGUF model for llama.cpp"
    else:
        runner, what = _GENAI_RUNNER.format(plain_prompt=_PLAIN_PROMPT), "An ONNX model for onnxruntime-genai"
    folder = bundle_name(name, fmt, quant).removesuffix(".tar.gz")
    rows = "\n".join(f"| {d} | {i} | {r} |" for d, i, r in _ROWS[fmt])
    readme = _README.format(name=folder, what=what, fmt=fmt, quant=quant, rows=rows)
    if card is not None:  # the card heads the file; the how-to-run section follows under a level-2 title
        readme = card.rstrip("\n") + "\n\n" + readme.replace("# ", "## ", 1)
    readme = readme.encode()
    extra = {"run.py": runner.encode(), "calculator.py": Path(calculator.__file__).read_bytes(), "README.md": readme}
    sums = [f"{sha256(p)}  {p.name}" for p in files]
    sums += [f"{hashlib.sha256(data).hexdigest()}  {n}" for n, data in extra.items()]
    path = out / f"{folder}.tar.gz"
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for p in files:
            tar.add(p, arcname=f"{folder}/{p.name}")
        _add_bytes(tar, f"{folder}/run.py", extra["run.py"], 0o755)
        _add_bytes(tar, f"{folder}/calculator.py", extra["calculator.py"])
        _add_bytes(tar, f"{folder}/README.md", extra["README.md"])
        _add_bytes(tar, f"{folder}/SHA256SUMS", ("\n".join(sums) + "\n").encode())
    tmp.replace(path)
    return path

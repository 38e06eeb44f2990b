"""Edge bundle: a .tar.gz with the model, its tokenizer, a runtime-only runner, SHA256SUMS and a README."""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from toolkit.errors import ExportError
from toolkit.export.manifest import MANIFEST, PARTIAL, sha256

# Runners import only the runtime: llama_cpp (GGUF) or onnxruntime_genai (genai folder), never toolkit.
_GGUF_RUNNER = '''#!/usr/bin/env python3
"""Answer one question with this GGUF model; needs only llama-cpp-python (pip install llama-cpp-python)."""
import argparse
import os
from pathlib import Path

from llama_cpp import Llama

here = Path(__file__).resolve().parent
ap = argparse.ArgumentParser()
ap.add_argument("question", nargs="?", default="What is 12 * 7 - 4?")
ap.add_argument("--max-tokens", type=int, default=256)
ap.add_argument("--threads", type=int, default=os.cpu_count())
args = ap.parse_args()
llm = Llama(str(here / "{model}"), n_ctx=2048, n_threads=args.threads, verbose=False)
messages = [{{"role": "user", "content": args.question}}]
out = llm.create_chat_completion(messages=messages, max_tokens=args.max_tokens, temperature=0.0)
print(out["choices"][0]["message"]["content"])
'''

_GENAI_RUNNER = '''#!/usr/bin/env python3
"""Answer one question with this ONNX model; needs only onnxruntime-genai (pip install onnxruntime-genai)."""
import argparse
import json
from pathlib import Path

import onnxruntime_genai as og

here = Path(__file__).resolve().parent
ap = argparse.ArgumentParser()
ap.add_argument("question", nargs="?", default="What is 12 * 7 - 4?")
ap.add_argument("--max-tokens", type=int, default=256)
args = ap.parse_args()
model = og.Model(str(here))
tok = og.Tokenizer(model)
try:
    prompt = tok.apply_chat_template(json.dumps([{{"role": "user", "content": args.question}}]),
                                     add_generation_prompt=True)
except Exception:  # no chat template shipped: plain text prompt
    prompt = args.question
ids = tok.encode(prompt)
params = og.GeneratorParams(model)
params.set_search_options(max_length=len(ids) + args.max_tokens, do_sample=False)
gen = og.Generator(model, params)
gen.append_tokens(ids)
while not gen.is_done():
    gen.generate_next_token()
print(tok.decode(gen.get_sequence(0)[len(ids):]))
'''

_README = """# {name}

{what}, exported by `toolkit export` ({fmt}, {quant}). Check the files, then ask a question:

```bash
sha256sum -c SHA256SUMS
python3 run.py "Tom has 3 apples and buys 5 more. How many apples does he have?"
```

| device | install | run |
|---|---|---|
{rows}

`export.json` records the source model, the parity checks against it, and the tool versions.
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


def write_bundle(out: Path, fmt: str, quant: str, name: str) -> Path:
    """OUT/<name>-<fmt>-<quant>.tar.gz holding one folder of that name; returns its path."""
    check_bundle_format(fmt)
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != PARTIAL and not p.name.endswith(".tar.gz"))
    if fmt == "gguf":
        model = next(p.name for p in files if p.suffix == ".gguf")
        files = [p for p in files if p.suffix == ".gguf" or p.name == MANIFEST]
        runner, what = _GGUF_RUNNER.format(model=model), "A GGUF model for llama.cpp"
    else:
        runner, what = _GENAI_RUNNER.format(), "An ONNX model for onnxruntime-genai"
    folder = f"{name}-{fmt}-{quant}"
    rows = "\n".join(f"| {d} | {i} | {r} |" for d, i, r in _ROWS[fmt])
    readme = _README.format(name=folder, what=what, fmt=fmt, quant=quant, rows=rows).encode()
    extra = {"run.py": runner.encode(), "README.md": readme}
    sums = [f"{sha256(p)}  {p.name}" for p in files]
    sums += [f"{hashlib.sha256(data).hexdigest()}  {n}" for n, data in extra.items()]
    path = out / f"{folder}.tar.gz"
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for p in files:
            tar.add(p, arcname=f"{folder}/{p.name}")
        _add_bytes(tar, f"{folder}/run.py", extra["run.py"], 0o755)
        _add_bytes(tar, f"{folder}/README.md", extra["README.md"])
        _add_bytes(tar, f"{folder}/SHA256SUMS", ("\n".join(sums) + "\n").encode())
    tmp.replace(path)
    return path

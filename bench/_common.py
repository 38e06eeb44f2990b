"""Shared by the bench scripts: machine description and the refusal to time on a busy machine."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch


def machine(threads: int) -> dict:
    """What every result row carries, so figures from different machines are never mixed up."""
    from toolkit import __version__
    from toolkit.eval.machine import cpu_features, cpu_model

    return {"cpu": cpu_model(), "cpu_features": cpu_features(), "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "torch": torch.__version__, "toolkit": __version__,
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def require_quiet(threads: int, force: bool) -> None:
    """Exit when other processes, sampled for a second, leave fewer free cores than our threads (DESIGN.md,
    contention trap; this script's own children do not count)."""
    from toolkit.eval.machine import busy_check

    check = busy_check(threads)
    if check["busy"] and not force:
        sys.exit(f"machine busy (other processes used {check['others_cores']:.2f} of {check['cores']} cores with "
                 f"{threads} thread(s) wanted): figures would be meaningless; wait for a quiet machine or pass --force")


def emit(result: dict, out: Path | None) -> None:
    """Print the result JSON and, when asked, write it to `out` too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def hf_folder(model: str, dest: Path) -> Path:
    """A save_pretrained folder for `model`, as a trained student folder is: a GGUF is dequantized once into
    `dest`, its special tokens fixed as we evaluate (no BOS added: chat prompts carry their own markers)."""
    from toolkit.runtime.loading import load_model_and_tokenizer
    from toolkit.runtime.models import resolve_model

    ref = resolve_model(model)
    if ref.kind == "hf":
        return ref.path
    if not (dest / "config.json").is_file():
        model_, tok = load_model_and_tokenizer(ref)
        if hasattr(tok, "add_bos_token"):
            tok.add_bos_token = False
        model_.save_pretrained(dest)
        tok.save_pretrained(dest)
    return dest

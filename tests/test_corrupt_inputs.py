"""Corrupt inputs and hostile disks: one clear error, nothing already done lost, no half-written file."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, DEAD, one_line_error, toolkit, write_tiny_recipe
from tests.fault_teacher import FaultTeacher
from toolkit.core.errors import ModelError, ToolkitError
from toolkit.core.integrity import check_gguf, check_hf_folder, check_safetensors

def _whole_files(root: Path) -> None:
    """Every file a run left is whole: no temporaries, every JSON/JSONL parses."""
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    for p in root.rglob("*.json*"):
        text = p.read_text()
        json.loads(text) if p.suffix == ".json" else [json.loads(x) for x in text.splitlines()]


# -- model files ----------------------------------------------------------------------------------
def test_truncated_and_fake_gguf(tmp_path, smollm2_gguf):
    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(4 << 20))  # the header and part of the tensors of a 98 MB file
    with pytest.raises(ModelError, match="truncated"):
        check_gguf(cut)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"<html>404</html>")
    with pytest.raises(ModelError, match="not a GGUF file"):
        check_gguf(fake)
    check_gguf(smollm2_gguf)  # the whole file passes
    # As a llama.cpp teacher and as a student: refused before a run folder exists.
    recipe = write_tiny_recipe(tmp_path, tmp_path / "cut.gguf", DEAD)
    one_line_error(toolkit("distill", str(recipe), cwd=tmp_path, timeout=120), "cut.gguf: truncated")
    r = toolkit("distill", str(recipe), f"student.model={smollm2_gguf}", "teacher.backend=llama.cpp",
                "teacher.base_url=null", f"teacher.model={fake}", cwd=tmp_path, timeout=120)
    one_line_error(r, "fake.gguf: not a GGUF file")
    assert not (tmp_path / "runs").exists()


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_truncated_safetensors(model_copy, tmp_path):
    weights = model_copy / "model.safetensors"
    check_safetensors(weights)
    os.truncate(weights, weights.stat().st_size - 1000)
    with pytest.raises(ModelError, match="truncated safetensors file: its tensors need"):
        check_safetensors(weights)
    recipe = write_tiny_recipe(tmp_path, model_copy, DEAD)
    one_line_error(toolkit("distill", str(recipe), cwd=tmp_path, timeout=120), "model.safetensors: truncated")
    r = toolkit("eval", str(model_copy), "--suite", "multiarith", "--limit", "1", "--data-root", str(DATA),
                "--out", str(tmp_path / "res.json"), cwd=tmp_path, timeout=120)
    one_line_error(r, "truncated safetensors")
    os.truncate(weights, 5)
    with pytest.raises(ModelError, match="truncated safetensors file"):
        check_safetensors(weights)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").write_text('{"model_type": "llama",'), "config.json: not a readable JSON"),
    (lambda d: (d / "config.json").write_text('{"hidden_size": 64}'), "no model_type"),
    (lambda d: (d / "model.safetensors").unlink(), "no weights"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"),
     "header is not JSON"),
    (lambda d: (d / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors"}}'), "missing weight shard"),
])
def test_broken_hf_folder(model_copy, damage, message):
    check_hf_folder(model_copy)
    damage(model_copy)
    with pytest.raises(ModelError, match=message):
        check_hf_folder(model_copy)


@pytest.fixture(scope="module")
def genai_export(tiny_model_dir, tmp_path_factory) -> Path:
    """A real onnxruntime-genai fp32 export of the tiny random llama, its weights in model.onnx.data."""
    import onnx

    from toolkit.export.config import ExportConfig
    from toolkit.export.run import export_model

    out = tmp_path_factory.mktemp("genai-src") / "genai"
    export_model(str(tiny_model_dir), out, ExportConfig(format="genai", quant="fp32", threads=1, max_new_tokens=2))
    model = onnx.load(str(out / "model.onnx"))
    for f in out.glob("*.onnx.data"):
        f.unlink()
    onnx.save(model, str(out / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    return out


def test_truncated_onnx_graph_and_weights(genai_export, tmp_path):
    """`toolkit bench` and `toolkit eval` refuse a cut ONNX export in one line, before any runtime loads it."""
    from toolkit.core.integrity import check_onnx_folder

    check_onnx_folder(genai_export)  # the whole export passes
    cut_graph, cut_weights = tmp_path / "cut-graph", tmp_path / "cut-weights"
    for d in (cut_graph, cut_weights):
        shutil.copytree(genai_export, d)
    graph = cut_graph / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    weights = cut_weights / "model.onnx.data"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 1])
    for folder, needle in ((cut_graph, "model.onnx: truncated or corrupt ONNX model"),
                           (cut_weights, "model.onnx.data: truncated ONNX weights: tensor ")):
        one_line_error(toolkit("bench", str(folder), "--reps", "1", cwd=tmp_path, timeout=120), needle)
        one_line_error(toolkit("eval", str(folder), "--suite", "multiarith", "--limit", "1", "--data-root",
                                str(DATA), "--out", str(tmp_path / "ev"), cwd=tmp_path, timeout=120), needle)
    (cut_weights / "model.onnx.data").unlink()
    with pytest.raises(ModelError, match="its weights file model.onnx.data is missing"):
        check_onnx_folder(cut_weights)


# -- data ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("lines, where", [
    (['{"question": "What is 1 plus 1?", "answer": 2}', '{"question": "broken', ""], "bad.jsonl:2: invalid JSON"),
    (['{"question": "What is 1 plus 1?", "answer": 2}', "", '{"question": "No answer?"}'],
     "bad.jsonl:3: missing or empty field 'answer'"),
    (['["a list"]'], "bad.jsonl:1: expected an object"),
])
def test_dataset_lines_that_do_not_parse_are_named(tmp_path, tiny_model_dir, lines, where):
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, DEAD)
    one_line_error(toolkit("distill", str(recipe), "data.train.path=bad.jsonl", cwd=tmp_path, timeout=120), where)


# -- disks --------------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_fills_up_during_training_then_resumes(tmp_path, tiny_model_dir):
    with FaultTeacher(tmp_path / "server.jsonl") as srv, tmpfs(tmp_path / "small", "160k") as disk:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        args = ["distill", str(recipe), f"output_dir={disk}", f"data.root={DATA}"]
        full = toolkit(*args, cwd=tmp_path)
        one_line_error(full, "No space left on device", "run again to resume")
        run = disk / "tiny"
        stages = json.loads((run / "manifest.json").read_text())["stages"]
        assert "round-0/rationales" in stages and "round-0/train" not in stages
        _whole_files(run)
        asked = len(srv.rows())
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        done = toolkit(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert len(srv.rows()) == asked  # the resume paid for no teacher request
        _whole_files(run)


_FILL_CACHE = """
import resource, signal, sys
from toolkit.teacher.cache import RequestCache
from toolkit.core.errors import ToolkitError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, 96 * 1024))
cache = RequestCache(sys.argv[1])
for i in range(1000):
    try:
        cache.put(f"k{i}", "m", {}, "x" * 2000)
    except ToolkitError as exc:
        print(i, exc)
        break
"""


def test_cache_write_past_a_file_size_limit_keeps_earlier_entries(tmp_path):
    db = tmp_path / "c.sqlite"
    r = subprocess.run([sys.executable, "-c", _FILL_CACHE, str(db)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    stored, message = r.stdout.split(" ", 1)
    assert int(stored) > 5 and "cannot write the teacher cache" in message and message.count("\n") == 1
    from toolkit.teacher.cache import RequestCache

    cache = RequestCache(db)
    assert len(cache) == int(stored) and cache.get("k0") == "x" * 2000


def test_unwritable_output_and_cache_folders(tmp_path, tiny_model_dir, monkeypatch):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, DEAD)
    (tmp_path / "plain-file").write_text("x")
    one_line_error(toolkit("distill", str(recipe), f"output_dir={tmp_path / 'plain-file' / 'runs'}",
                            cwd=tmp_path, timeout=120), "cannot create run folder")
    # A read-only bind mount over an existing run folder: root cannot write there either.
    ro = tmp_path / "runs" / "tiny"
    ro.mkdir(parents=True)
    if subprocess.run(["mount", "--bind", str(ro), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        one_line_error(toolkit("distill", str(recipe), cwd=tmp_path, timeout=120),
                        "manifest.json: Read-only file system")
    finally:
        subprocess.run(["umount", str(ro)], check=False)
    assert list(ro.iterdir()) == []
    # A teacher cache that cannot be created.
    with FaultTeacher(tmp_path / "server.jsonl") as srv:
        recipe = write_tiny_recipe(tmp_path, tiny_model_dir, srv.base_url)
        monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "plain-file" / "cache"))
        r = toolkit("distill", str(recipe), f"data.root={DATA}", cwd=tmp_path, timeout=120)
    one_line_error(r, "cannot open the teacher cache", "TOOLKIT_CACHE")
    assert json.loads((ro / "manifest.json").read_text())["stages"]["data"]["status"] == "done"


def test_atomic_writer_leaves_the_old_file(tmp_path):
    from toolkit.core.jsonio import atomic_write_text

    target = tmp_path / "small" / "out.txt"
    with tmpfs(tmp_path / "small", "8k"):
        atomic_write_text(target, "old")
        with pytest.raises(ToolkitError, match="cannot write .*out.txt: No space left on device"):
            atomic_write_text(target, "y" * 200_000)
        assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["out.txt"]

"""`toolkit bench` on real runtimes: the packaged SmolLM2 GGUF (llama.cpp), a tiny random llama exported
to onnxruntime-genai int4 and to optimum ONNX, and its torch folder. Tiny pp/tg, 1 thread; timings
are not asserted against targets (those live in bench/), only their consistency."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import toolkit
from toolkit.eval.bench import BusyMachineError, run_bench, write_outputs
from toolkit.eval.config import BenchConfig
from toolkit.eval.remote import BenchError

STAT_KEYS = {"mean", "std", "p50", "p90", "p99", "n"}
QUICK = BenchConfig(prompt_tokens=8, gen_tokens=6, reps=2, warmup=1, allow_busy=True)


def check_row(row: dict, reps: int, gen_tokens: int) -> None:
    """The Bench JSON contract of DESIGN.md and the arithmetic that ties its figures together."""
    for key in ("model", "format", "quant", "file_size_bytes", "threads", "ttft_ms", "prefill_tok_s",
                "decode_tok_s", "peak_rss_bytes", "machine", "roofline", "samples"):
        assert key in row, key
    for key in ("ttft_ms", "prefill_tok_s", "decode_tok_s", "decode_ms_per_token"):
        s = row[key]
        assert set(s) == STAT_KEYS
        assert s["mean"] > 0 and s["std"] >= 0
        assert s["p50"] <= s["p90"] <= s["p99"]
    assert row["decode_ms_per_token"]["n"] == reps * gen_tokens
    assert len(row["samples"]) == reps and all(len(s["decode_step_ms"]) == gen_tokens for s in row["samples"])
    # decode tok/s of a rep is its token count over the sum of its step times
    for s in row["samples"]:
        assert s["decode_tok_s"] == pytest.approx(gen_tokens / (sum(s["decode_step_ms"]) / 1e3), rel=1e-3)
    assert row["decode_tok_s"]["mean"] == pytest.approx(sum(s["decode_tok_s"] for s in row["samples"]) / reps)
    assert row["file_size_bytes"] > 0 and row["peak_rss_bytes"] > 10_000_000  # a Python + runtime process
    m = row["machine"]
    assert m["cores"] >= 1 and m["mem_bw_GBps"] > 0 and m["mem_bw_all_cores_GBps"] > 0 and m["versions"]["python"]
    assert m["mem_bw_probe"]["threads"] == row["threads"] and m["busy_check"]["threads"] == row["threads"]
    assert row["busy"] == m["busy_check"]["busy"]
    roof = row["roofline"]
    assert 0 < roof["weight_bytes"] <= row["file_size_bytes"] and roof["kv_bytes_per_position"] > 0
    # weights once per step, plus the KV cache of every position the timed steps attend to (mean over steps)
    assert roof["kv_context"] == row["prompt_tokens"] + (row["gen_tokens"] + 1) / 2
    assert roof["bytes_per_token"] == round(roof["weight_bytes"] + roof["kv_bytes_per_position"] * roof["kv_context"])
    assert roof["ceiling_tok_s"] == pytest.approx(m["mem_bw_GBps"] * 1e9 / roof["bytes_per_token"], rel=1e-6)
    assert roof["ratio"] == pytest.approx(row["decode_tok_s"]["mean"] / roof["ceiling_tok_s"])
    assert roof["above_ceiling"] == (roof["ratio"] > 1.0)


def test_gguf_bench_writes_json_csv_markdown(smollm2_gguf, tmp_path):
    row = run_bench("pkg:smollm2-135m-instruct", QUICK, 1)
    check_row(row, reps=2, gen_tokens=6)
    assert (row["backend"], row["format"], row["quant"]) == ("llama.cpp", "gguf", "q4_1")
    # SmolLM2 ties its embedding to the output matrix, so a decode step reads (almost) the whole file
    assert row["roofline"]["weight_bytes"] > 0.95 * row["file_size_bytes"]
    assert "tied" in row["roofline"]["bytes_note"]
    # llama.cpp's f16 cache: 30 layers × 3 KV heads × (64 + 64) × 2 B per position
    assert row["roofline"]["kv_bytes_per_position"] == 30 * 3 * 128 * 2
    assert row["peak_rss_bytes"] > row["file_size_bytes"]  # the weights are resident (mmap counts once touched)
    paths = write_outputs([row], tmp_path / "bench.json")
    assert json.loads(paths[0].read_text())["decode_tok_s"] == row["decode_tok_s"]
    (line,) = list(csv.DictReader(paths[1].open()))
    assert float(line["decode_tok_s_mean"]) == pytest.approx(row["decode_tok_s"]["mean"])
    assert float(line["roofline_ratio"]) == pytest.approx(row["roofline"]["ratio"])
    md = paths[2].read_text()
    assert md.count("\n") == 3 and "q4_1" in md


@pytest.fixture(scope="module")
def tiny_exports(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny llama as an onnxruntime-genai int4 folder (genai builder) and an optimum ONNX folder."""
    out = tmp_path_factory.mktemp("exports")
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", "tiny", "-i", str(tiny_model_dir),
                    "-o", str(out / "genai"), "-p", "int4", "-e", "cpu", "-c", str(out / "cache")],
                   check=True, capture_output=True)
    from optimum.exporters.onnx import main_export

    main_export(str(tiny_model_dir), output=out / "onnx", task="text-generation-with-past", device="cpu")
    return {"genai": out / "genai", "onnx": out / "onnx", "torch": tiny_model_dir}


@pytest.mark.parametrize("backend", ["genai", "onnx", "torch"])
def test_bench_of_onnx_genai_and_torch_folders(tiny_exports, backend):
    row = run_bench(str(tiny_exports[backend]), QUICK, 1)
    check_row(row, reps=2, gen_tokens=6)
    assert row["backend"] == backend
    expected = {"genai": ("genai", "int4"), "onnx": ("onnx", "fp32"), "torch": ("hf", "float32")}[backend]
    assert (row["format"], row["quant"]) == expected
    if backend == "genai":  # only gathered by row: the fp32 embedding (458 tokens × 64 × 4 B) and the
        # rotary cos/sin caches (2 × 1024 positions × 8 × 4 B)
        assert f"{458 * 64 * 4 + 2 * 1024 * 8 * 4} B only gathered" in row["roofline"]["bytes_note"]
    # every runtime keeps this float32 model's cache in float32: 2 layers × 2 × 2 KV heads × 16 × 4 B
    assert row["roofline"]["kv_bytes_per_position"] == 512


def test_thread_sweep_and_errors_through_the_cli(smollm2_gguf, tmp_path):
    proc = toolkit("bench", "pkg:smollm2-135m-instruct", "--prompt-tokens", "4", "--gen-tokens", "3", "--reps", "1",
                   "--threads", "1,2", "--allow-busy", "--out", str(tmp_path / "sweep.json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["threads"] for r in rows] == [1, 2]
    assert len(list(csv.DictReader((tmp_path / "sweep.csv").open()))) == 2
    for args in (["missing.gguf"], ["pkg:smollm2-135m-instruct", "--threads", "one"],
                 ["pkg:smollm2-135m-instruct", "--reps", "0"]):
        bad = toolkit("bench", *args, "--allow-busy", "--out", str(tmp_path / "x.json"), cwd=tmp_path)
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr, bad.stderr
    assert not (tmp_path / "x.json").exists()


def test_busy_machine_is_refused(smollm2_gguf, monkeypatch):
    """A spec whose threads do not fit beside the others' CPU use is refused with a ToolkitError, not a figure."""
    from toolkit.eval.remote import LocalExecutor

    class Loaded(LocalExecutor):  # the real runner, asked for 64 threads: more than any idle cores here
        def __call__(self, spec):
            return super().__call__({**spec, "threads": 64})

    with pytest.raises(BusyMachineError, match="busy"):
        run_bench("pkg:smollm2-135m-instruct", BenchConfig(prompt_tokens=4, gen_tokens=2, reps=1), 1,
                  executor=Loaded())
    with pytest.raises(BenchError):
        run_bench(str(Path(__file__)), BenchConfig(prompt_tokens=4, gen_tokens=2, reps=1, allow_busy=True), 1)

"""The bench's machine facts: the read-only bandwidth probe, the roofline bound with its KV cache, the flag for a
decode speed above its ceiling, and the busy check that counts other processes' CPU use (not the load average).

Real processes, no mocks. The machine is shared, so nothing here asserts that it is idle: spinners started by a
test must show up as others, and our own children must not.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import tracemalloc

import pytest

from toolkit.eval.bench import BusyMachineError, markdown, run_bench, summarize
from toolkit.eval.config import BenchConfig
from toolkit.eval.machine import (busy_check, cores, cpu_use, is_busy, last_level_cache_bytes, machine_info,
                                  read_bandwidth, slices)
from toolkit.eval.roofline import mean_context, model_facts, roofline

SPIN = [sys.executable, "-c", "while True: pass"]


def detached_spinner() -> int:
    """A busy-looping process outside our process tree (its shell parent exits, so it is re-parented): the
    stand-in for someone else's job. Returns its pid; the caller kills it."""
    out = subprocess.run(["sh", "-c", f"{shlex.quote(sys.executable)} -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True).stdout
    return int(out)


def stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- bandwidth probe --------------------------------------------------------------------------------------

def test_slices_cover_every_item_once():
    for n in (1, 7, 1000, 2 ** 25 + 3):
        for threads in (1, 2, 3, 8):
            parts = slices(n, threads)
            assert len(parts) == threads and parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # contiguous, no overlap, no gap


@pytest.mark.parametrize("threads", [1, 2])
def test_probe_counts_only_bytes_it_reads(threads):
    """The probe's traffic is its buffer read once per run: no destination is written (the old copy probe wrote a
    second buffer of the same size and counted only the read half), and GB/s = bytes read ÷ best time."""
    size = 64 * 1024 * 1024
    read_bandwidth(threads, 1024 * 1024, runs=1)  # lazy imports first: their code objects are allocations too
    tracemalloc.start()
    try:
        r = read_bandwidth(threads, size, runs=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r["bytes_read_per_run"] == size and r["threads"] == threads
    assert peak < size + 1024 * 1024  # the one buffer; the reduction writes one scalar per thread
    assert r["GBps"] == pytest.approx(size / r["best_s"] / 1e9, rel=0.01)


def test_machine_info_records_both_probes_method_and_buffer():
    m = machine_info(threads=1)
    probe = m["mem_bw_probe"]
    assert m["mem_bw_GBps"] > 0 and m["mem_bw_all_cores_GBps"] > 0
    assert probe["threads"] == 1 and probe["all_cores"] == m["cores"]
    assert "read-only" in probe["method"] and "best of 5" in probe["method"]
    assert probe["buffer_bytes"] >= 256 * 1024 * 1024 and probe["bytes_read_per_run"] == probe["buffer_bytes"]
    if last_level_cache_bytes():
        assert probe["buffer_bytes"] >= 8 * last_level_cache_bytes()


# --- roofline ---------------------------------------------------------------------------------------------

def crafted_result(decode_tok_s: float, mem_bw_gbps: float) -> dict:
    """A runner result whose two reps both decoded 4 tokens at `decode_tok_s`."""
    step_ms = 1e3 / decode_tok_s
    rep = {"ttft_ms": 10.0, "prefill_tok_s": 100.0, "decode_tok_s": decode_tok_s, "decode_step_ms": [step_ms] * 4}
    return {"backend": "torch", "model_path": "m", "load_s": 0.1, "peak_rss_bytes": 1,
            "samples": [{"rep": 0, **rep}, {"rep": 1, **rep}],
            "machine": {"cores": 2, "mem_bw_GBps": mem_bw_gbps, "busy_check": {"busy": False}}}


def test_decode_above_its_ceiling_is_flagged(tiny_model_dir):
    facts = {**model_facts("torch", tiny_model_dir), "file_size_bytes": 1}
    spec = {"threads": 1, "prompt_tokens": 8, "gen_tokens": 4, "reps": 2, "warmup": 0}
    ceiling = roofline(facts, 1.0, 1.0, 8, 4)["ceiling_tok_s"]
    slow = summarize("m", facts, spec, crafted_result(0.5 * ceiling, 1.0), "localhost")
    fast = summarize("m", facts, spec, crafted_result(2.5 * ceiling, 1.0), "localhost")
    assert fast["roofline"]["ratio"] == pytest.approx(2.5) and fast["roofline"]["above_ceiling"] is True
    assert slow["roofline"]["above_ceiling"] is False
    table = markdown([slow, fast])
    assert "measurement error" in table.splitlines()[3] and "250%" not in table
    assert slow["roofline"]["ratio"] == pytest.approx(0.5) and "| 50% |" in table.splitlines()[2]


def test_kv_cache_enters_bytes_per_token_at_the_run_context(tiny_model_dir):
    # the tiny llama: 2 layers, 2 KV heads of 64 / 4 = 16, keys and values in float32
    facts = {**model_facts("torch", tiny_model_dir), "file_size_bytes": 1}
    assert facts["kv_bytes_per_position"] == 2 * 2 * 2 * 16 * 4
    for pp, tg in ((8, 4), (512, 64)):
        spec = {"threads": 1, "prompt_tokens": pp, "gen_tokens": tg, "reps": 2, "warmup": 0}
        roof = summarize("m", facts, spec, crafted_result(10.0, 1.0), "localhost")["roofline"]
        assert roof["kv_context"] == mean_context(pp, tg) == pp + (tg + 1) / 2
        assert roof["bytes_per_token"] == round(facts["weight_bytes"] + 512 * roof["kv_context"])
        assert roof["ceiling_tok_s"] == pytest.approx(1e9 / roof["bytes_per_token"], rel=1e-6)


# --- busy check -------------------------------------------------------------------------------------------

def test_busy_rule_uses_others_cores():
    # 2 cores: one thread fits beside others using up to 1.25 cores, two threads beside up to 0.25
    assert not is_busy(1.25, 2, 1) and is_busy(1.3, 2, 1)
    assert not is_busy(0.2, 2, 2) and is_busy(0.3, 2, 2)


def test_others_cpu_counts_strangers_not_our_children():
    """A spinner outside our tree appears in `others` and `top`; our own child spinning in the same window is
    counted as ours (the CLI's previous stage, a run's own training) and never makes the bench refuse."""
    stranger = detached_spinner()
    child = subprocess.Popen(SPIN)
    try:
        time.sleep(0.2)
        use = cpu_use(2.0)
    finally:
        stop(stranger)
        child.kill()
        child.wait()
    # each spinner gets a full core on a quiet machine, and still a tenth of one beside other engineers' tests
    others = {p["pid"]: p["cores"] for p in use["top"]}
    assert others.get(stranger, 0) > 0.1, use
    assert child.pid not in others, use
    assert use["own_cores"] > 0.1 and use["others_cores"] >= others[stranger] - 0.05, use
    assert use["others_cores"] <= use["total_cores"] - use["own_cores"] + 0.05


def test_own_past_work_is_not_counted():
    """Heavy work our process did just before the check (as an eval before a bench) leaves no trace in it: the
    sample looks only at the window, where the load average would still carry it for minutes."""
    pid = os.getpid()
    end = time.monotonic() + 2.0
    while time.monotonic() < end:  # 2 s of CPU in this very process
        pass
    use = cpu_use(1.0)
    assert pid not in {p["pid"] for p in use["top"]}
    assert use["own_cores"] < 0.2, use  # the sampler itself sleeps


def test_spinners_on_every_core_are_refused(smollm2_gguf):
    spinners = [detached_spinner() for _ in range(cores())]
    try:
        time.sleep(0.2)
        check = busy_check(1)
        assert check["busy"] and check["others_cores"] > cores() - 0.75, check
        assert set(spinners) & {p["pid"] for p in check["top"]}, check
        with pytest.raises(BusyMachineError, match="other processes used"):
            run_bench("pkg:smollm2-135m-instruct", BenchConfig(prompt_tokens=4, gen_tokens=2, reps=1), 1)
    finally:
        for pid in spinners:
            stop(pid)

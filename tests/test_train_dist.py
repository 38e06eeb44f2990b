"""Data-parallel training: two torchrun CPU processes (gloo) follow one process's loss curve and weights."""
from __future__ import annotations

import json

import torch

from toolkit.runtime.models import resolve_model
from toolkit.core.recipe import TrainConfig
from toolkit.data.prompt_rule import prompt_record, read_record
from toolkit.runtime.loading import load_tokenizer
from toolkit.training.train import tokenize_example, train
from toolkit.training.train_job import launch, write_job

ROWS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"}],
         "completion": f"{a} + {b} = {a + b}. The answer is {a + b}."}
        for a, b in [(2, 3), (4, 4), (10, 3), (3, 3), (5, 1), (9, 4), (2, 6)]]

# Gradients summed over two processes add the same terms in another order: float32 rounding only.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def _examples(tok, cfg: TrainConfig) -> list:
    """ROWS tokenized once, as the launching process does before it writes the job."""
    return [tokenize_example(tok, r["messages"], r["completion"], cfg.seq_len) for r in ROWS]


def test_two_gloo_processes_match_one_process(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from toolkit.runtime.loading import load_model_and_tokenizer

    # seq_len 48 keeps one example per packed sequence: 7 sequences, global batches of 3, 3 and 1,
    # so in the third batch the second process has nothing and still joins the all-reduce.
    cfg = TrainConfig(max_steps=6, batch_size=3, seq_len=48, lr=3e-3, warmup_ratio=0.0, threads=1,
                      checkpoint_every=0, processes=2)
    model, tok = load_model_and_tokenizer(resolve_model(str(tiny_model_dir)))
    examples = _examples(tok, cfg)
    one = train(model, tok, examples, cfg, tmp_path / "one", seed=5)
    assert one["packed_sequences"] == 7 and one["processes"] == 1

    job = write_job(tmp_path / "job" / "train-job.json", student=str(tiny_model_dir), base_dir=None,
                    examples=examples, cfg=cfg, out=tmp_path / "two", seed=5)
    steps: list[int] = []
    two = launch(job, threads=1, on_step=lambda row: steps.append(row["step"]))
    assert two["processes"] == 2
    assert steps == list(range(1, 7))
    for a, b in zip(one["curve"], two["curve"]):
        assert abs(a["loss"] - b["loss"]) <= LOSS_RTOL * abs(a["loss"]), (a, b)
    got = load_file(tmp_path / "two" / "model.safetensors")
    for name, p in model.named_parameters():
        if name in got:  # tied embeddings are stored once
            torch.testing.assert_close(got[name], p.detach(), atol=WEIGHT_ATOL, rtol=0)
    assert json.loads((tmp_path / "two" / "training_info.json").read_text())["examples"] == 7


def test_several_machines_share_one_rendezvous(tmp_path):
    from toolkit.training.train_job import launch_cmd

    cfg = TrainConfig(processes=4, nodes=2, master_addr="10.0.0.5", master_port=29511)
    cmd = launch_cmd(tmp_path / "train-job.json", cfg, node_rank=1)
    at = {flag: cmd[cmd.index(flag) + 1] for flag in ("--nnodes", "--node-rank", "--nproc-per-node",
                                                      "--master-addr", "--master-port")}
    assert at == {"--nnodes": "2", "--node-rank": "1", "--nproc-per-node": "4", "--master-addr": "10.0.0.5",
                  "--master-port": "29511"}
    assert cmd[-2:] == ["toolkit.training.train_job", str(tmp_path / "train-job.json")]


def test_distill_trains_with_two_processes(tmp_path, tiny_model_dir, teacher_server):
    """`toolkit distill ... train.processes=2`: the training stage runs under torchrun, the rest as usual."""
    from tests.conftest import toolkit, write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, teacher_server.base_url)
    r = toolkit("distill", str(recipe), "train.processes=2", "train.max_steps=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    stage = json.loads((run / "manifest.json").read_text())["stages"]["round-0/train"]
    assert stage["processes"] == 2 and stage["steps"] == 3
    assert len((run / "round-0" / "train_log.jsonl").read_text().splitlines()) == 3
    assert (run / "round-0" / "student" / "model.safetensors").is_file()
    # the job carries the prompt rule's record to the process that saves the student
    assert read_record(run / "round-0" / "student") == prompt_record(["cot"], chat=True)
    assert "round-0/eval" in json.loads((run / "manifest.json").read_text())["stages"]


def _listening_sockets_of_our_children() -> list[tuple[int, str, int]]:
    """(pid, local address, port) of every listening TCP socket held by a descendant of this process."""
    import os
    import socket
    import struct
    from pathlib import Path

    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    ours, me = set(), os.getpid()
    for pid in parent:
        p = pid
        while p in parent and p not in (0, 1):
            if parent[p] == me:
                ours.add(pid)
                break
            p = parent[p]
    listening = {}  # socket inode -> (address, port)
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A":  # LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc prints the address as host-order 32-bit words
            raw = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0]) for i in range(0, len(raw), 4))
            listening[cols[9]] = (socket.inet_ntop(family, raw), int(hex_port, 16))
    out = []
    for pid in ours:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in listening:
                    out.append((pid, *listening[target[8:-1]]))
        except OSError:
            continue
    return out


def test_single_node_training_listens_on_loopback_only(tiny_model_dir, tmp_path):
    """torch's rendezvous store (and gloo's own sockets) bind every interface unless told otherwise: a
    one-machine job must accept connections from this machine only."""
    import ipaddress

    cfg = TrainConfig(max_steps=3, batch_size=2, seq_len=48, lr=3e-3, threads=1, checkpoint_every=0, processes=2,
                      master_addr="127.0.0.1")
    examples = _examples(load_tokenizer(resolve_model(str(tiny_model_dir))), cfg)
    job = write_job(tmp_path / "job" / "train-job.json", student=str(tiny_model_dir), base_dir=None,
                    examples=examples, cfg=cfg, out=tmp_path / "out", seed=5)
    seen: list[tuple[int, str, int]] = []

    def on_step(row: dict) -> None:
        if row["step"] == 1:  # the workers and the store are up mid-training
            seen.extend(_listening_sockets_of_our_children())

    launch(job, threads=1, on_step=on_step)
    assert seen, "no listening socket found while the job ran"
    assert all(ipaddress.ip_address(addr).is_loopback for _, addr, _ in seen), seen

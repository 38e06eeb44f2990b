"""One training job described by a JSON file, run by every process of torchrun / accelerate launch.

`toolkit distill` writes `round-K/train-job.json`, with the tokenized examples beside it, and, with
`train.processes > 1` or `train.nodes > 1`, runs `python -m torch.distributed.run ... -m toolkit.training.train_job
JOB` (see launch_cmd). The same file can be launched by hand (torchrun, accelerate launch), see docs/gpu.md.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.core.errors import ToolkitError
from toolkit.core.jsonio import atomic_write_json, atomic_write_jsonl, read_jsonl
from toolkit.core.lifetime import ends_with_this_process
from toolkit.runtime.models import resolve_model
from toolkit.core.recipe import TrainConfig
from toolkit.runtime.loading import load_model_and_tokenizer

if TYPE_CHECKING:  # train.py imports torch at its top; run_job imports it on first use
    from toolkit.training.train import Example


class TrainJobError(ToolkitError):
    """A data-parallel training job failed in one of its processes."""


@dataclass(frozen=True)
class TrainJob:
    """A written job file and what the launching process needs of it, so that it never reads the file back."""

    path: Path
    cfg: TrainConfig
    result: Path  # rank 0's statistics (JSON)
    progress: Path  # one JSON line per finished optimizer step


def write_job(path: Path, *, student: str, base_dir: str | None, examples: list[Example], cfg: TrainConfig,
              out: Path, seed: int, prompt: dict | None = None) -> TrainJob:
    """The job file, and the launching process's tokenized examples beside it (`train-examples.jsonl`):
    everything a process needs for the same training run, without tokenizing again; `prompt`: the prompt rule's
    record the examples were rendered by, saved with the student (train.train)."""
    examples_path = path.with_name("train-examples.jsonl")
    atomic_write_jsonl(examples_path, ({"input_ids": e.input_ids, "labels": e.labels} for e in examples))
    job = TrainJob(path, cfg, path.with_name("train-result.json"), path.with_name("train-progress.jsonl"))
    atomic_write_json(path, {"student": student, "base_dir": base_dir, "examples": str(examples_path),
                             "train": cfg.model_dump(mode="json"), "out": str(out), "seed": seed,
                             "result": str(job.result), "progress": str(job.progress), "prompt": prompt})
    return job


def run_job(job_path: Path) -> dict:
    """Train as this process's rank; rank 0 writes the statistics to the job's result file."""
    # torch (at the top of dist.py and train.py): heavy optional runtime, imported on first use
    from toolkit.training import dist
    from toolkit.training.train import Example, train

    job = json.loads(Path(job_path).read_text())
    cfg = TrainConfig(**job["train"])
    rank, _ = dist.setup()
    model, tok = load_model_and_tokenizer(resolve_model(job["student"], job["base_dir"]))
    examples = [Example(**row) for row in read_jsonl(Path(job["examples"]))]
    progress = Path(job["progress"])
    if rank == 0:
        progress.unlink(missing_ok=True)

    def log(row: dict) -> None:
        if rank == 0:  # one line per step: the launching process reads it for its progress bar
            with open(progress, "a") as f:
                f.write(json.dumps(row) + "\n")

    stats = train(model, tok, examples, cfg, Path(job["out"]), seed=job["seed"], log=log, prompt=job["prompt"])
    if rank == 0:
        atomic_write_json(Path(job["result"]), stats)
    return stats


# On one machine the rendezvous port is chosen by the torchrun wrapper below, which binds it itself.
_LOCAL_PORT = "0"


def launch_cmd(job_path: Path, cfg: TrainConfig, node_rank: int = 0) -> list[str]:
    """The torchrun command of one machine: `cfg.processes` workers.

    Alone (one node), torchrun runs inside `python -m toolkit.training.train_job --torchrun-on-loopback`, whose
    rendezvous store listens on 127.0.0.1 only (see _torchrun_on_loopback); several nodes rendezvous at
    master_addr:master_port, which the other machines must reach.
    """
    if cfg.nodes == 1:
        head = [sys.executable, "-m", "toolkit.training.train_job", "--torchrun-on-loopback"]
        addr, port = "127.0.0.1", _LOCAL_PORT
    else:
        head = [sys.executable, "-m", "torch.distributed.run"]
        addr, port = cfg.master_addr, str(cfg.master_port)
    return [*head, "--nnodes", str(cfg.nodes), "--node-rank", str(node_rank),
            "--nproc-per-node", str(cfg.processes), "--master-addr", addr, "--master-port", port,
            "-m", "toolkit.training.train_job", str(Path(job_path).resolve())]


def _torchrun_on_loopback(args: list[str]) -> None:
    """torchrun for one machine with its rendezvous store listening on 127.0.0.1 only.

    torch's TCPStore server binds every interface (`::` or 0.0.0.0) whatever --master-addr says, so
    anyone on the network could write into the job's store. A TCPStore can instead be handed a socket
    that already listens: we bind one to 127.0.0.1, start the store on it as a multi-tenant server,
    and torchrun's static rendezvous, which opens a multi-tenant store on the same port in this
    process, gets this server instead of binding its own (tests/test_train_dist.py checks /proc/net).
    """
    import torch.distributed as td
    from torch.distributed.run import main as torchrun

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    store = td.TCPStore("127.0.0.1", port, None, True, datetime.timedelta(minutes=30), wait_for_workers=False,
                        multi_tenant=True, master_listen_fd=sock.detach())  # the store owns and closes the fd
    at = args.index("--master-port") + 1
    torchrun([*args[:at], str(port), *args[at + 1:]])
    del store  # kept alive until torchrun is done: the multi-tenant server lives as long as a store holds it


def launch(job: TrainJob, threads: int | None, on_step=None, log_path: Path | None = None) -> dict:
    """Run the job under torchrun (as node 0) and return rank 0's statistics; raises TrainJobError on failure.

    `threads` is the torch thread count of each process (OMP_NUM_THREADS too, so workers do not
    oversubscribe the cores); `on_step(row)` is called for each finished optimizer step.
    """
    cfg, result, progress = job.cfg, job.result, job.progress
    result.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or 1)}
    if cfg.nodes == 1 and sys.platform.startswith("linux"):
        # gloo's and NCCL's own worker-to-worker sockets: loopback too (by default the interface of the
        # host name, which may face the network).
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    log = open(log_path or job.path.with_name("train-processes.log"), "ab")
    proc = subprocess.Popen(ends_with_this_process(launch_cmd(job.path, cfg)), stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    seen = 0
    while proc.poll() is None:
        time.sleep(0.5)
        seen = _report(progress, seen, on_step)
    _report(progress, seen, on_step)
    if proc.returncode != 0 or not result.is_file():
        raise TrainJobError(f"data-parallel training failed (exit {proc.returncode}); see {log.name}")
    return json.loads(result.read_text())


def _report(progress: Path, seen: int, on_step) -> int:
    if not progress.is_file():
        return seen
    lines = progress.read_text().splitlines()
    for line in lines[seen:]:
        try:
            row = json.loads(line)
        except ValueError:  # a line still being written: read it next time
            break
        if on_step:
            on_step(row)
        seen += 1
    return seen


if __name__ == "__main__":
    if sys.argv[1:2] == ["--torchrun-on-loopback"]:
        _torchrun_on_loopback(sys.argv[2:])
    else:
        run_job(Path(sys.argv[1]))

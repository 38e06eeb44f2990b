"""Data-parallel helpers: the process group torchrun / accelerate launch describe, and gradient all-reduce."""
from __future__ import annotations

import os

import torch
import torch.distributed as td

# All-reduce gradients in flat buckets of at most this many elements (fp32: 4 bytes each, so 128 MiB):
# one call per bucket instead of one per tensor, without doubling the memory of a large model.
BUCKET_ELEMENTS = 32 * 1024 * 1024


def setup() -> tuple[int, int]:
    """(rank, world size). Joins the process group when launched with several processes.

    torchrun and `accelerate launch` both set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT; gloo carries CPU training, nccl GPU training.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not td.is_initialized():
        td.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if td.is_initialized():
        return td.get_rank(), td.get_world_size()
    return 0, 1


def device() -> torch.device:
    """This process's device: its own GPU (LOCAL_RANK) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Sum every parameter's gradient over all processes (each process held the loss of its share).

    A process whose share of a step was empty has no gradients yet: it contributes zeros, so
    uneven shares never leave a process waiting in a collective the others skipped.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= BUCKET_ELEMENTS:
            _reduce(bucket)
            bucket, size = [], 0
    if bucket:
        _reduce(bucket)


def _reduce(grads: list[torch.Tensor]) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    td.all_reduce(flat, op=td.ReduceOp.SUM)
    at = 0
    for g in grads:
        g.copy_(flat[at:at + g.numel()].view_as(g))
        at += g.numel()


def sum_scalars(loss: torch.Tensor, tokens: int) -> tuple[torch.Tensor, int]:
    """The step's loss sum and token count over all processes (for the log; the update uses gradients)."""
    dev = device()
    both = torch.tensor([float(loss), float(tokens)], dtype=torch.float64, device=dev)
    td.all_reduce(both, op=td.ReduceOp.SUM)
    return both[0].cpu(), int(both[1].item())


def barrier() -> None:
    """Wait for every process (rank 0 saves the model while the others wait); a no-op alone."""
    if td.is_initialized():
        td.barrier()

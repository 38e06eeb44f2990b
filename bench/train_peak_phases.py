"""Where in a training step the distill process's memory peaks: RSS per phase of round 0's training, in the process
`toolkit distill` runs in (a fresh process's heap behaves differently: bench/README.md, Memory).

Runs `toolkit distill RECIPE` in this process into --output-dir until round 0's training ends, then exits. A thread
samples RSS every 0.5 ms and keeps the highest per phase: the forward, the backward pass of each decoder layer (its
recomputed forward and its backward, marked by the layer's forward pre-hook once the backward has begun), and the
optimizer step with what follows. Prints the phases with the highest RSS and the stage's VmHWM (what the manifest
records), as JSON.

    .venv/bin/python bench/train_peak_phases.py recipes/quickstart.yaml --output-dir /tmp/phases \\
        --out bench/results/memory/train_peak_phases.json
    .venv/bin/python bench/train_peak_phases.py recipes/quickstart.yaml --output-dir /tmp/phases-autograd \\
        --autograd-embedding   # the tied embedding's gradient left to autograd (the path before EmbeddingGrad)

Use a fresh --output-dir each time: a finished stage is not run again, so a reused folder measures nothing.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
import time
from pathlib import Path

from _common import emit, machine
from old_paths import old_paths


class PhaseSampler:
    """Highest RSS seen per named phase; `phase` is set by hooks while a daemon thread samples."""

    def __init__(self, interval_s: float = 0.0005):
        self.phase, self.peaks, self.interval_s = "setup", {}, interval_s
        self.in_backward = False

    def run(self) -> None:
        from toolkit.core.memory import rss_bytes

        while True:
            rss, phase = rss_bytes(), self.phase
            if rss and rss > self.peaks.get(phase, 0):
                self.peaks[phase] = rss
            time.sleep(self.interval_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--output-dir", type=Path, required=True, help="a fresh folder for the run")
    ap.add_argument("--autograd-embedding", action="store_true",
                    help="leave a tied embedding's gradient to autograd (bench/old_paths.py)")
    ap.add_argument("--top", type=int, default=8, help="phases to report, highest RSS first")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    command = "python " + " ".join(sys.argv)  # before sys.argv becomes the toolkit command below
    if args.output_dir.exists() and any(args.output_dir.iterdir()):
        sys.exit(f"{args.output_dir} is not empty: a finished stage would not run again; pass a fresh folder")

    import torch

    import toolkit.training.train as train_module
    from toolkit.cli import main as toolkit_main
    from toolkit.core.memory import hwm_bytes, rss_bytes

    sampler = PhaseSampler()
    threading.Thread(target=sampler.run, daemon=True).start()
    real_backward, real_train = torch.Tensor.backward, train_module.train

    def backward(tensor, *a, **k):
        sampler.in_backward, sampler.phase = True, "backward: head"  # the LM head's chunks come first
        try:
            return real_backward(tensor, *a, **k)
        finally:
            sampler.in_backward, sampler.phase = False, "optimizer step and the rest"

    def train(model, *a, **k):
        inner = train_module._unwrapped(model)
        layers = getattr(getattr(inner, inner.base_model_prefix), "layers")
        for i, layer in enumerate(layers):
            layer.register_forward_pre_hook(functools.partial(_mark_layer, sampler, i))
        start = rss_bytes()
        sampler.phase = "train setup"
        with old_paths(embed=not args.autograd_embedding):
            real_train(model, *a, **k)
        hwm = hwm_bytes()
        top = sorted(sampler.peaks.items(), key=lambda kv: -kv[1])[: args.top]
        emit({"command": command, "recipe": str(args.recipe),
              "embedding_grad": not args.autograd_embedding, "train_start_rss_bytes": start,
              "stage_vmhwm_bytes": hwm, "phases": [{"phase": p, "peak_rss_bytes": b} for p, b in top],
              "machine": machine(torch.get_num_threads())}, args.out)
        os._exit(0)  # round 0's training was what we came for

    torch.Tensor.backward = backward
    train_module.train = train  # student.py imports it from the module when its stage runs
    sys.argv = ["toolkit", "distill", str(args.recipe), f"output_dir={args.output_dir}"]
    toolkit_main()
    sys.exit("the run ended without training round 0 (was it finished already?)")


def _mark_layer(sampler: PhaseSampler, index: int, module, inputs) -> None:
    sampler.phase = f"backward: layer {index:02d}" if sampler.in_backward else "forward"


if __name__ == "__main__":
    main()

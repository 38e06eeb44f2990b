"""Supervised fine-tuning of a causal LM: loss on answer tokens only, packed sequences, AdamW on CPU or GPU."""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from toolkit.core import untrusted_json
from toolkit.core.errors import ToolkitError
from toolkit.core.memory import pin_mmap_threshold, release_memory, unpin_mmap_threshold
from toolkit.core.recipe import TrainConfig
from toolkit.data.prompt_rule import PROMPT_FILE, training_texts
from toolkit.training import dist

IGNORE = -100  # label value torch's cross-entropy skips: prompt tokens carry no loss


@dataclass
class Example:
    """One tokenized training example: prompt tokens (no loss) followed by completion tokens."""

    input_ids: list[int]
    labels: list[int]


def tokenize_example(tokenizer, messages: list[dict], completion: str, max_len: int) -> Example:
    """`messages` + the assistant's `completion` as the prompt rule renders them (toolkit.data.prompt_rule: the
    chat template, or the plain format for a tokenizer without one); labels mask everything but the completion.

    The prompt is rendered with the generation prompt, exactly as at inference, and the completion is followed by
    the end of its turn so the student learns to stop. The labels start where the prompt's text ends: where the
    prompt's own token ids are a prefix of the example's, after them; where a merge across the boundary makes
    them differ, at the first token that starts at or after that character (fast tokenizers' offsets), so that
    no prompt text is labelled and no completion token is skipped.
    """
    prompt, full = training_texts(tokenizer, messages, completion)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    n_prompt = len(prompt_ids)
    if ids[:n_prompt] != prompt_ids:
        n_prompt = _first_token_at(tokenizer, full, len(prompt))
    # Drop trailing whitespace/newline tokens after the end-of-turn token: they carry no signal.
    eos = tokenizer.eos_token_id
    if eos in ids[n_prompt:]:
        ids = ids[: len(ids) - ids[::-1].index(eos)]
    ids = ids[:max_len]
    labels = [IGNORE] * min(n_prompt, len(ids)) + ids[n_prompt:]
    return Example(ids, labels)


def _first_token_at(tokenizer, text: str, char: int) -> int:
    """The index of the first token of `text` that starts at or after character `char` (a token that straddles
    it holds prompt text, so it is not the completion's)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ToolkitError(f"the tokenizer {type(tokenizer).__name__} merges the prompt's last characters with the "
                           f"answer's first, and only a fast tokenizer says where each token starts: load its fast "
                           f"version (tokenizer.json)")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return next((i for i, (start, _) in enumerate(offsets) if start >= char), len(offsets))


def pack(examples: list[Example], seq_len: int, seed: int) -> list[list[Example]]:
    """Group whole examples into bins of at most seq_len tokens (first-fit decreasing).

    Examples are never split, and each keeps its own positions, so packing changes only the
    amount of padding, not what the model sees (see `collate`).
    """
    order = sorted(examples, key=lambda e: -len(e.input_ids))
    bins: list[list[Example]] = []
    room: list[int] = []
    for ex in order:
        n = len(ex.input_ids)
        for i, free in enumerate(room):
            if n <= free:
                bins[i].append(ex)
                room[i] -= n
                break
        else:
            bins.append([ex])
            room.append(seq_len - n)
    random.Random(seed).shuffle(bins)
    return bins


def collate(batch: list[list[Example]], pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors for a batch of packed bins, with a block-diagonal causal mask per bin.

    The 4-D additive mask lets a token attend only to earlier tokens of its own example, and
    position ids restart at 0 for each example: a packed example trains exactly as it would alone.
    """
    width = max(sum(len(e.input_ids) for e in b) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(batch), width), dtype=torch.long)
    allowed = torch.zeros((len(batch), 1, width, width), dtype=torch.bool)
    for r, b in enumerate(batch):
        at = 0
        for ex in b:
            n = len(ex.input_ids)
            ids[r, at:at + n] = torch.tensor(ex.input_ids)
            labels[r, at:at + n] = torch.tensor(ex.labels)
            pos[r, at:at + n] = torch.arange(n)
            allowed[r, 0, at:at + n, at:at + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
            at += n
        # Padding rows attend to themselves only, so softmax never sees an all-masked row.
        idx = torch.arange(at, width)
        allowed[r, 0, idx, idx] = True
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": mask}


def planned_steps(n_bins: int, cfg: TrainConfig) -> int:
    """Optimizer steps for `cfg.epochs` passes over n_bins packed sequences (or cfg.max_steps)."""
    batches_per_epoch = math.ceil(n_bins / cfg.batch_size)
    return cfg.max_steps or max(1, math.ceil(batches_per_epoch * cfg.epochs / cfg.grad_accum))


def _shifted_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropies over the labelled positions."""
    logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    target = labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")


# Config fields of architectures that change the logits after the LM head (softcapping, scaling): the
# answer-only loss below would skip that step, so such models take the full forward instead.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _unwrapped(model):
    """The causal LM itself: a peft wrapper's LoRA-injected model, or the model as given."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _embedding(model, which: str):
    """The model's `get_input_embeddings()` / `get_output_embeddings()` ("input" / "output"), or None."""
    getter = getattr(model, f"get_{which}_embeddings", None)
    return getter() if getter is not None else None


def _body_and_head(model):
    """(decoder, lm_head) of a causal LM (peft-wrapped or not), or None when the head cannot be run apart."""
    inner = _unwrapped(model)
    prefix = getattr(inner, "base_model_prefix", "")
    body = getattr(inner, prefix, None) if prefix else None
    head = _embedding(inner, "output")
    if body is None or head is None or any(getattr(inner.config, k, None) for k in _LOGIT_TRANSFORMS):
        return None
    return body, head


# Answer tokens per pass of the LM head and its cross-entropy (see _chunked_head_loss). SmolLM2's 49,152-word
# vocabulary: 128 tokens are 25 MB of fp32 logits per tensor. On the quickstart's round-0 batches (150-280 answer
# tokens a sequence) the training peak, sampled every ms, was 2.85 GB with 256 and 2.74 GB with 128.
LOSS_CHUNK_TOKENS = 128


def _head_loss(head, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(head(hidden).float(), target, reduction="sum")


def _chunked_head_loss(head, hidden: torch.Tensor, target: torch.Tensor, chunk: int) -> torch.Tensor:
    """Sum of cross-entropies of `head(hidden)` against `target`, `chunk` tokens at a time.

    Each chunk's logits are recomputed in the backward pass instead of kept (activation checkpointing
    of the head): in one pass, the logits, their log-softmax and its gradient for every answer token of
    a batch are held at once (SmolLM2, 1,000 answer tokens: 49,152 x 4 bytes each = 0.2 GB per tensor).
    Chunks of 256 took the training peak from 2.87 to 2.75 GB (bench/README.md, Memory). The recompute
    costs one more forward of the head per chunk. At most `chunk` tokens: one pass, nothing recomputed.
    """
    if hidden.size(0) <= chunk:
        return _head_loss(head, hidden, target)
    from torch.utils.checkpoint import checkpoint

    return sum(checkpoint(_head_loss, head, h, y, use_reentrant=False)
               for h, y in zip(hidden.split(chunk), target.split(chunk)))


def batch_loss(model, t: dict[str, torch.Tensor], inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of next-token cross-entropies over the answer tokens of a collated batch.

    The LM head runs only at the positions whose next token carries a label, LOSS_CHUNK_TOKENS at a time,
    instead of batch × seq_len × vocab logits (SmolLM2: 4 × 512 × 49,152 fp32 = 0.4 GB, plus as much again
    for the softmax and the gradient) of which the prompt's and the padding's are thrown away. The position
    that predicts token i+1 is i: hidden[:, :-1] pairs with labels[:, 1:]. Same sum as the model's own
    forward over every position, to float rounding (tests/test_memory.py); that forward is the path for a
    model whose head cannot be run apart (_body_and_head).
    inputs_embeds: the batch's embeddings, looked up by the caller (EmbeddingGrad), instead of the input ids.
    """
    tokens = {"input_ids": t["input_ids"]} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    parts = _body_and_head(model)
    if parts is None:
        logits = model(**tokens, attention_mask=t["attention_mask"], position_ids=t["position_ids"],
                       use_cache=False).logits
        return _shifted_loss(logits, t["labels"])
    body, head = parts
    hidden = body(**tokens, attention_mask=t["attention_mask"], position_ids=t["position_ids"],
                  use_cache=False).last_hidden_state
    target = t["labels"][:, 1:]
    keep = target != IGNORE
    return _chunked_head_loss(head, hidden[:, :-1][keep], target[keep], LOSS_CHUNK_TOKENS)  # (answer tokens, hidden)


class EmbeddingGrad:
    """The input embedding's gradient added in place, when its weight is the trained LM head's.

    With tied weights the head's gradient (49,152 x 576 fp32 = 113 MB for SmolLM2) is made first in the
    backward pass and held to its end; autograd then makes the embedding's own dense gradient, a second
    113 MB tensor, when every other gradient is already held, only to add it to the first. In the
    quickstart's distill process that was the training peak (bench/README.md, Memory). Here the batch's
    embeddings are looked up outside autograd as a leaf (batch x seq x hidden), and after the backward
    pass its gradient is added to the weight's rows in place (index_add_), skipping `padding_idx` as
    nn.Embedding's backward does. Same sums, in another order: equal to float rounding.
    `of(model)` is None, and training unchanged, for untied or frozen embeddings (LoRA) and for embedding
    subclasses that transform the lookup (Gemma 3 scales it).
    """

    def __init__(self, emb: torch.nn.Embedding):
        self.emb = emb

    @classmethod
    def of(cls, model) -> EmbeddingGrad | None:
        inner = _unwrapped(model)
        emb, head = _embedding(inner, "input"), _embedding(inner, "output")
        if (type(emb) is not torch.nn.Embedding or head is None or head.weight is not emb.weight
                or not emb.weight.requires_grad or emb.max_norm is not None or emb.sparse):
            return None
        return cls(emb)

    def lookup(self, input_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.emb(input_ids).requires_grad_()

    def add_grad(self, input_ids: torch.Tensor, embeds: torch.Tensor) -> None:
        """After the backward pass: the leaf's gradient into the weight's, row by token id."""
        weight, ids, grad = self.emb.weight, input_ids.reshape(-1), embeds.grad.reshape(-1, embeds.size(-1))
        if self.emb.padding_idx is not None:
            keep = ids != self.emb.padding_idx
            ids, grad = ids[keep], grad[keep]
        if weight.grad is None:  # no loss reached the head (cannot happen with answer tokens)
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, ids, grad.to(weight.grad.dtype))


def use_gradient_checkpointing(setting, device: torch.device) -> bool:
    """train.gradient_checkpointing resolved: "auto" is on for CPU training, off on a GPU (see recipe.py)."""
    if setting == "auto":
        return device.type == "cpu"
    return bool(setting)


def micro_batches(share: list, size: int | None) -> list[list]:
    """This process's share of a batch in the chunks one forward and backward pass each take.

    train.micro_batch_size: activations grow with the sequences in one pass, the update does not
    change (losses are summed and divided by the step's token count either way). None: the whole share.
    """
    size = size or len(share) or 1  # an empty share (more processes than sequences): no pass
    return [share[i:i + size] for i in range(0, len(share), size)]


def train(model, *args, **kwargs) -> dict:
    """`_train` (same arguments), and whichever way it ends, the process's malloc pin and the model's gradient
    checkpointing are undone: after an exception a library caller's later generation would otherwise run
    2.2x slower (bench/memory.py) and with checkpointing still on."""
    checkpointing_before = bool(getattr(model, "is_gradient_checkpointing", False))
    try:
        return _train(model, *args, **kwargs)
    finally:
        # On success `_train` has done both already; these repeat it harmlessly (one mallopt call).
        if getattr(model, "is_gradient_checkpointing", False) and not checkpointing_before:
            model.gradient_checkpointing_disable()  # LoRA enables it on this same base model, through peft
        unpin_mmap_threshold()


def _train(model, tokenizer, examples: list[Example], cfg: TrainConfig, out_dir: Path, *, seed: int,
           log: Callable[[dict], None] | None = None, checkpoint_dir: Path | None = None,
           prompt: dict | None = None) -> dict:
    """Fine-tune `model` on `examples` and save it as a save_pretrained folder at `out_dir`, with `prompt` (the
    prompt rule's record of how the examples were rendered, toolkit.data.prompt_rule) as its prompt.json.

    The folder appears only when complete (written beside it, then renamed). Every
    `cfg.checkpoint_every` optimizer steps the whole training state is saved in `checkpoint_dir`
    (default: `<out_dir>.checkpoint`); a later call with the same inputs resumes from it and ends
    with the same weights as an uninterrupted run. Under torchrun / accelerate launch each process
    trains on its share of every batch (see toolkit/training/dist.py). Returns statistics: steps, tokens
    seen, loss curve, seconds, and `resumed_from_step` when it resumed. (bench/old_paths.py keeps the
    paths this replaced, for bench/memory.py to compare.)
    """
    rank, world = dist.setup()
    device = dist.device()
    pin_mmap_threshold()  # freed activations go back to the OS instead of piling up in malloc's arenas
    torch.manual_seed(seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.lora:
        # heavy optional runtime (peft pulls in transformers), imported on first use
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora, lora_alpha=2 * cfg.lora, lora_dropout=0.05,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    model.to(device)
    checkpointing = use_gradient_checkpointing(getattr(cfg, "gradient_checkpointing", False), device)
    if checkpointing:
        # Keep only each layer's input for the backward pass and recompute the rest (non-reentrant:
        # works with frozen embeddings under LoRA, no input that needs a gradient).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    embedding = EmbeddingGrad.of(model)
    bins = pack(examples, cfg.seq_len, seed)
    steps = planned_steps(len(bins), cfg)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    # fused: one kernel per parameter instead of foreach's lists of temporaries: 1.11x the tokens/s of
    # foreach for SmolLM2-135M on CPU, same peak (bench/README.md, "Memory").
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type in ("cpu", "cuda")
                            and all(p.dtype.is_floating_point for p in params))
    amp = torch.bfloat16 if cfg.precision == "bf16" else None  # autocast's matmul dtype; None: plain fp32
    warmup = int(steps * cfg.warmup_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = BatchOrder(len(bins), cfg.batch_size, seed)
    ckpt = Checkpoint(checkpoint_dir or out_dir.with_name(out_dir.name + ".checkpoint"),
                      _fingerprint(examples, cfg, seed))
    curve, tokens, done, earlier_s = [], 0, 0, 0.0
    state = ckpt.load()
    if state is not None:
        with torch.no_grad():
            for n, p in named:
                p.copy_(state["params"][n])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        order.restore(state["order"])
        done, tokens, curve, earlier_s = state["step"], state["tokens"], state["curve"], state["seconds"]
    start = time.perf_counter() - earlier_s
    for step in range(done, steps):
        opt.zero_grad(set_to_none=True)
        micro = [[bins[i] for i in order.next()] for _ in range(cfg.grad_accum)]
        # Normalise by the step's counted tokens (over all processes) so every answer token weighs the same.
        n_tokens = sum(sum(l != IGNORE for l in e.labels[1:]) for b in micro for bn in b for e in bn)
        step_loss = torch.zeros((), dtype=torch.float64)
        step_tokens = 0
        for batch in micro:
            mine = batch[rank::world]  # this process's share of the global batch
            for chunk in micro_batches(mine, cfg.micro_batch_size):
                t = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
                embeds = embedding.lookup(t["input_ids"]) if embedding is not None else None
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    loss_sum = batch_loss(model, t, embeds)
                (loss_sum / max(1, n_tokens)).backward()
                if embedding is not None:
                    embedding.add_grad(t["input_ids"], embeds)
                    del embeds
                step_loss += loss_sum.detach().double().cpu()
                step_tokens += sum(len(e.input_ids) for b in chunk for e in b)  # real tokens, not padding
        if world > 1:
            dist.sum_gradients(params)
            step_loss, step_tokens = dist.sum_scalars(step_loss, step_tokens)
        tokens += step_tokens
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        row = {"step": step + 1, "loss": float(step_loss) / max(1, n_tokens), "lr": sched.get_last_lr()[0],
               "seconds": round(time.perf_counter() - start, 2)}
        curve.append(row)
        if log:
            log(row)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps and rank == 0:
            ckpt.save({"params": {n: p.detach().cpu() for n, p in named}, "optimizer": opt.state_dict(),
                       "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "order": order.state(),
                       "step": step + 1, "tokens": tokens, "curve": curve,
                       "seconds": time.perf_counter() - start})
    seconds = time.perf_counter() - start
    # AdamW's state (twice the weights) and the last step's gradients (once) are done with: freed before the
    # save, which otherwise ran on top of them and set the training stage's peak (quickstart: 3.07 GB, against
    # 2.7 GB during the steps; an RSS trace showed the high point after the last step, not in one).
    opt.zero_grad(set_to_none=True)
    del opt, sched
    release_memory()
    if checkpointing:
        model.gradient_checkpointing_disable()  # the saved config and later generation run without it
    unpin_mmap_threshold()  # training's activations are gone; generation reuses the heap again
    if cfg.lora:
        model = model.merge_and_unload()  # a plain HF folder that every exporter and runtime loads
    model.eval()
    if rank == 0:
        _save(model, tokenizer, out_dir, {"steps": steps, "bins": len(bins), "examples": len(examples)}, prompt)
        ckpt.remove()  # the finished folder supersedes it
    dist.barrier()
    stats = {"steps": steps, "examples": len(examples), "packed_sequences": len(bins), "tokens": tokens,
             "tokens_per_s": round(tokens / seconds, 1), "final_loss": curve[-1]["loss"],
             "first_loss": curve[0]["loss"], "train_seconds": round(seconds, 2), "processes": world,
             "gradient_checkpointing": checkpointing, "precision": cfg.precision, "curve": curve}
    if done:
        stats["resumed_from_step"] = done
    return stats


def _fingerprint(examples: list[Example], cfg: TrainConfig, seed: int) -> str:
    """What a checkpoint must match to be resumed: the data, the seed and the settings that shape training."""
    h = hashlib.sha256()
    # Thread/process counts, the checkpoint interval, activation checkpointing (a recompute, same
    # gradients) and the micro-batch size (same summed gradients) change neither the data order nor the steps.
    h.update(json.dumps([seed, cfg.model_dump(exclude={"threads", "processes", "nodes", "master_addr", "master_port",
                                                     "checkpoint_every", "gradient_checkpointing",
                                                     "micro_batch_size"})],
                        sort_keys=True).encode())
    for e in examples:
        h.update(json.dumps([e.input_ids, e.labels]).encode())
    return h.hexdigest()


class Checkpoint:
    """The latest training state of one run, in `<folder>/state.pt`, replaced atomically at each save.

    A checkpoint may come from elsewhere (multi-node runs share the run folder), so it is data, never
    code: `<folder>/state.json` holds the fingerprint and is checked before state.pt is opened at all,
    and state.pt is read with `torch.load(weights_only=True)` (tensors and plain containers only).
    A state.pt without a matching state.json (another run's, or one from before state.json) is ignored
    and the training starts over; one that matches but is not plain data, or is damaged, is a
    ToolkitError naming it and the folder to delete. Nothing in it is ever run.
    """

    KIND = "toolkit-train-checkpoint"

    def __init__(self, folder: Path, fingerprint: str):
        self.folder = Path(folder)
        self.file = self.folder / "state.pt"
        self.meta = self.folder / "state.json"
        self.fingerprint = fingerprint

    def save(self, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # The fingerprint first: it is the same for every save of this run, so a kill between the two
        # writes leaves either this run's state.pt or another run's, whose own fingerprint differs.
        meta = json.dumps({"kind": self.KIND, "fingerprint": self.fingerprint})
        if not self.meta.is_file() or self.meta.read_text() != meta:
            tmp_meta = self.meta.with_suffix(".json.tmp")
            tmp_meta.write_text(meta)
            os.replace(tmp_meta, self.meta)
        tmp = self.file.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            torch.save({**state, "fingerprint": self.fingerprint}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)  # a kill leaves either the previous checkpoint or this one, never half

    def load(self) -> dict | None:
        """The saved state, or None when there is none or it belongs to other data or settings."""
        if not self.file.is_file():
            return None
        try:
            meta = untrusted_json.load(self.meta, max_bytes=1 << 20)  # ours is ~100 bytes; a copy may be hostile
        except (OSError, untrusted_json.UntrustedJSONError):
            return None  # no fingerprint beside it: never unpickled
        if meta.get("kind") != self.KIND or meta.get("fingerprint") != self.fingerprint:
            return None
        try:
            state = torch.load(self.file, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError: not plain data; RuntimeError/EOFError: a damaged zip
            if isinstance(exc, pickle.UnpicklingError):  # torch's text suggests loading it unsafely: not shown
                why = "it holds objects other than tensors and plain data"
            else:
                text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                why = f"it is damaged ({text})"
            raise ToolkitError(f"training checkpoint {self.file} was not loaded: {why}; delete {self.folder} "
                               f"to train this round from its first step") from None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            return None
        return state

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class BatchOrder:
    """Endless epochs over the packed bins, reshuffled each epoch; its position can be saved and restored.

    Yields bin indices; the state is the epoch's RNG state before its shuffle plus the cursor,
    so a resumed run replays exactly the batches an uninterrupted run would see.
    """

    def __init__(self, n_bins: int, batch_size: int, seed: int):
        self.n, self.batch_size = n_bins, batch_size
        self.rng = random.Random(seed)
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.epoch_rng = self.rng.getstate()
        self.order = list(range(self.n))
        self.rng.shuffle(self.order)
        self.at = 0

    def next(self) -> list[int]:
        if self.at >= self.n:
            self._new_epoch()
        out = self.order[self.at:self.at + self.batch_size]
        self.at += self.batch_size
        return out

    def state(self) -> dict:
        return {"rng": self.epoch_rng, "at": self.at}

    def restore(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self._new_epoch()
        self.at = state["at"]


def _save(model, tokenizer, out_dir: Path, info: dict, prompt: dict | None) -> None:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    if prompt is not None:  # inside the folder before it appears: a student is never without its prompt rule
        (tmp / PROMPT_FILE).write_text(json.dumps(prompt, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)

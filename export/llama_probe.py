"""Tokenize and greedily continue with plain llama.cpp in a child process (a bad vocab aborts only the child).

Reads {"model", "texts", "prompts", "max_new_tokens", "threads", "eos"} as JSON on stdin and prints
{"tokens": [ids per text], "greedy": [new ids per prompt]}. Run as `python -m toolkit.export.llama_probe`.
"""
from __future__ import annotations

import json
import sys


def probe(spec: dict) -> dict:
    # heavy optional runtime, imported on first use
    from llama_cpp import Llama

    n_ctx = max([len(p) for p in spec["prompts"]] + [0]) + spec["max_new_tokens"] + 16
    llm = Llama(spec["model"], n_ctx=max(64, n_ctx), n_threads=spec["threads"], n_threads_batch=spec["threads"],
                n_batch=min(512, max(64, n_ctx)), flash_attn=True, verbose=False)
    tokens = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in spec["texts"]]
    greedy = []
    for ids in spec["prompts"]:
        llm.reset()
        out: list[int] = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if token in spec["eos"] or len(out) >= spec["max_new_tokens"]:
                break
        greedy.append(out)
    return {"tokens": tokens, "greedy": greedy}


if __name__ == "__main__":
    json.dump(probe(json.load(sys.stdin)), sys.stdout)

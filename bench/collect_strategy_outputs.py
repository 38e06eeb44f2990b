"""Collect real L2M and PoT teacher replies (packaged Qwen2.5-Coder-0.5B via llama.cpp) as parser fixtures.

Run once; the output is committed as tests/data/real_strategy_outputs.jsonl:

    .venv/bin/python bench/collect_strategy_outputs.py --n 14 --out tests/data/real_strategy_outputs.jsonl

Replies go through a request cache (--cache) so an interrupted collection resumes. The committed
fixture holds, so far, one Qwen2.5-Coder-0.5B reply (the shared machine ran it at 0.4 tokens/s, load
above 12) and twelve L2M/PoT replies of the packaged SmolLM2-135M teacher from a tiny end-to-end run
(`origin` says which), and 50 Qwen L2M/PoT replies taken from the round-0 rationales of the SIKeD
experiment (bench/results/siked-cpu-easy; answers as the parsers read them, spot-checked). Running the command above on a quiet machine replaces the file with 28 fresh Qwen replies.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from toolkit.data.answers import answers_match
from toolkit.teacher.cache import RequestCache
from toolkit.data.problems import load_suite, split_problems
from toolkit.core.recipe import TeacherConfig
from toolkit.data.strategies import clean_solution, final_answer, teacher_messages
from toolkit.teacher.teachers import open_teacher

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="MultiArith problems per strategy")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "toolkit-strategy-outputs.sqlite"))
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "real_strategy_outputs.jsonl"))
    args = ap.parse_args()
    problems = split_problems(load_suite("multiarith", args.data_root), {"pick": args.n}, 1)["pick"]
    cfg = TeacherConfig(model="pkg:qwen2.5-coder-0.5b-instruct", temperature=0.7, max_tokens=200,
                        threads=args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = RequestCache(Path(args.cache))
        with open_teacher(cfg, cache, base_dir=ROOT, log_dir=Path(tmp), seed=0) as teacher:
            for strategy in ("l2m", "pot"):
                texts = teacher.complete([teacher_messages(p.question, strategy) for p in problems], n=1,
                                         temperature=cfg.temperature, on_done=lambda: print(".", end="", flush=True))
                for p, (text,) in zip(problems, texts):
                    cleaned = clean_solution(strategy, text)
                    answer = final_answer(strategy, cleaned)[1] if cleaned else None
                    rows.append({"origin": f"teacher Qwen2.5-Coder-0.5B-Instruct Q4_K_M, MultiArith {p.id}, "
                                           f"{strategy} prompt, temperature 0.7, seed 0",
                                 "strategy": strategy, "question": p.question, "gold": p.answer, "output": text,
                                 "valid": cleaned is not None, "answer": answer,
                                 "correct": answers_match(answer, p.answer)})
                    print(strategy, p.id, rows[-1]["valid"], answer, p.answer, flush=True)
        cache.close()
    Path(args.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


if __name__ == "__main__":
    main()

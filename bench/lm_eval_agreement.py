"""Agreement with lm-evaluation-harness: the same checkpoint, GSM8K problems and prompt through lm-eval and
`toolkit eval`; writes strict/flexible scores, per-sample output agreement and the wall time of both.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/lm_eval_agreement.py --limit 50 --threads 2 --out bench/results/lm_eval_agreement.json

The checkpoint defaults to the packaged SmolLM2-135M-Instruct GGUF, dequantized once into a
save_pretrained folder (both tools then run the same fp32 torch model). lm-eval reads the local
GSM8K jsonl through a task config written here (`dataset_path: json`, no hub), with our system
instruction and the model's chat template, zero-shot, greedy, the same token budget and batch size.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import hf_folder

from toolkit.core.defaults import cache_root

ROOT = Path(__file__).resolve().parents[1]
TASK = "gsm8k_toolkit_local"


def write_task(folder: Path, data_root: Path, max_new_tokens: int) -> None:
    """An lm-eval task over the local GSM8K test file; the prompt is the bare question, as ours."""
    test = (data_root / "gsm8k" / "test.jsonl").resolve()
    train = (data_root / "gsm8k" / "train.jsonl").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TASK}.yaml").write_text(f"""\
task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {train}
    test: {test}
output_type: generate_until
training_split: train
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer.split('#### ')[-1]}}}}"
target_delimiter: ""
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "\\\\.$"]
generation_kwargs:
  until: ["<|im_end|>"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: {max_new_tokens}
num_fewshot: 0
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "The answer is (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: take_first
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: take_first
metadata:
  version: 1.0
""")


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[2]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    from toolkit.data.strategies import COT_INSTRUCTION

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pkg:smollm2-135m-instruct")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--work", default=None, help="scratch folder (default: the toolkit cache, bench/lm_eval_agreement)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "lm_eval_agreement.json"))
    ap.add_argument("--force", action="store_true", help="report timings even on a busy machine")
    args = ap.parse_args()

    work = Path(args.work) if args.work else cache_root() / "bench" / "lm_eval_agreement"
    model_dir = hf_folder(args.model, work / "model")
    write_task(work / "tasks", Path(args.data_root), args.max_new_tokens)
    # Both tools get the same thread count (torch reads OMP_NUM_THREADS) and no network.
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(work / "hf-home")}
    load_before = os.getloadavg()[0]

    lm_out = work / "lm_eval_out"
    lm_s = timed([sys.executable, "-m", "lm_eval", "--model", "hf",
                  "--model_args", f"pretrained={model_dir},dtype=float32", "--device", "cpu",
                  "--tasks", TASK, "--include_path", str(work / "tasks"), "--limit", str(args.limit),
                  "--batch_size", str(args.batch_size), "--apply_chat_template",
                  "--system_instruction", COT_INSTRUCTION, "--output_path", str(lm_out), "--log_samples",
                  "--seed", "0"], env)
    ours_out = work / "toolkit_out" / "results.json"
    ours_s = timed([sys.executable, "-m", "toolkit.cli", "eval", str(model_dir), "--backend", "torch",
                    "--suite", "gsm8k", "--limit", str(args.limit), "--threads", str(args.threads),
                    "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
                    "--data-root", args.data_root, "--out", str(ours_out), "--quiet"], env)
    load_after = os.getloadavg()[0]

    lm_results = json.loads(Path(sorted(glob.glob(f"{lm_out}/**/results_*.json", recursive=True))[-1])
                            .read_text())["results"][TASK]
    lm_samples = [json.loads(line) for line in
                  Path(sorted(glob.glob(f"{lm_out}/**/samples_{TASK}_*.jsonl", recursive=True))[-1])
                  .read_text().splitlines()]
    ours = json.loads(ours_out.read_text())["results"]["gsm8k"]
    our_samples = [json.loads(line) for line in (ours_out.parent / "samples_gsm8k.jsonl").read_text().splitlines()]
    lm_text = {s["doc_id"]: s["resps"][0][0] for s in lm_samples}
    same = sum(lm_text.get(i, "").strip() == s["output"].strip() for i, s in enumerate(our_samples))
    scores = {
        "lm_eval": {"strict_match": lm_results["exact_match,strict-match"],
                    "flexible_extract": lm_results["exact_match,flexible-extract"]},
        "toolkit": {"strict_match": ours["strict_match"], "flexible_extract": ours["flexible_extract"]},
    }
    diff = {k: round(100 * (scores["toolkit"][k] - scores["lm_eval"][k]), 2) for k in scores["toolkit"]}
    busy = max(load_before, load_after) > args.threads + 0.5
    report = {
        "model": args.model, "checkpoint": str(model_dir), "suite": "gsm8k", "n": ours["n"],
        "settings": {"threads": args.threads, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                     "fewshot": 0, "greedy": True, "prompt": "system instruction + question, model chat template"},
        "scores": scores, "difference_points": diff, "within_one_point": all(abs(v) <= 1.0 for v in diff.values()),
        "identical_outputs": same,
        "wall_s": None if busy and not args.force else {"lm_eval": round(lm_s, 1), "toolkit": round(ours_s, 1)},
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "timing_note": "not measured (machine busy)" if busy and not args.force else "",
        "command": " ".join([".venv/bin/python", "bench/lm_eval_agreement.py", *sys.argv[1:]]),
    }
    if report["wall_s"]:
        report["toolkit_at_least_as_fast"] = ours_s <= lm_s
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

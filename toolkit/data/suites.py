"""The suite registry: every built-in benchmark suite's name, file under the data root, format and train split."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Suite:
    """One built-in suite. `file` is relative to the data root; `format` names its loader in problems.py;
    `source` is the dataset it comes from; `train_split` the suite few-shot examples are drawn from (None: our
    own fixed examples); `evaluated`: offered to `toolkit eval` (a train split is not); `hub`: the dataset's
    id on the Hugging Face hub when its authors publish it there (model cards name it); `license`: the
    license its authors state, as the hub spells it (None: none stated)."""

    file: str
    format: str
    source: str
    train_split: str | None = None
    evaluated: bool = True
    hub: str | None = None
    license: str | None = None


# The suite name prefixes every id, so the GSM8K train and test files give disjoint ids
# ("gsm8k_train-0" / "gsm8k-0") though both say source gsm8k.
# Licenses and origins: the data root's README.md. Only GSM8K's authors publish on the hub (openai/gsm8k, whose
# test and train splits are our two files); the others come from their authors' GitHub repositories, and the
# hub copies of them are third-party uploads, so no hub id is claimed for them.
SUITES: dict[str, Suite] = {
    "gsm8k": Suite("gsm8k/test.jsonl", "gsm8k", "gsm8k", train_split="gsm8k_train", hub="openai/gsm8k",
                   license="mit"),
    "gsm8k_train": Suite("gsm8k/train.jsonl", "gsm8k", "gsm8k", evaluated=False, hub="openai/gsm8k",
                         license="mit"),
    "svamp": Suite("svamp/SVAMP.json", "svamp", "svamp", license="mit"),
    "asdiv": Suite("asdiv/ASDiv.xml", "asdiv", "asdiv", license="cc-by-nc-4.0"),
    "multiarith": Suite("multiarith/MultiArith.json", "multiarith", "multiarith"),
    "addsub": Suite("addsub/AddSub.json", "multiarith", "addsub"),
    "singleeq": Suite("singleeq/questions.json", "multiarith", "singleeq"),
}

# The suites `toolkit eval`, export's accuracy check and the leakage check score against, in table order.
EVAL_SUITES = tuple(name for name, suite in SUITES.items() if suite.evaluated)

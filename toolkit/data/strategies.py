"""Reasoning strategies (CoT, L2M, PoT): teacher and student prompts, strategy tags, parsers and final answers."""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from toolkit.data.answers import extract_strict, normalize_number
from toolkit.sandbox.runner import run_program, run_programs

Messages = list[dict[str, str]]

STRATEGIES = ("cot", "l2m", "pot")
TAGS = {s: f"[{s}]" for s in STRATEGIES}

COT_INSTRUCTION = (
    "Solve the math word problem step by step. Show each calculation, then finish with "
    'a last line of the form "The answer is N." where N is a single number.'
)
L2M_INSTRUCTION = (
    "Solve the math word problem by breaking it into simpler sub-questions. Write each as "
    '"Sub-question K: ..." followed by "Answer K: ..." with its calculation, in order, then finish with '
    'a last line of the form "The answer is N." where N is a single number.'
)
POT_INSTRUCTION = (
    "Solve the math word problem by writing a short Python program. Use one variable per quantity, "
    "compute the result step by step and store the final number in a variable named answer. "
    "Reply with the program only, in a ```python code block."
)
# The student of a multi-strategy recipe sees one prompt for all strategies and names its choice
# in the first token(s) of its reply; that choice is what the self-guided iterations refine.
TAGGED_INSTRUCTION = (
    "Solve the math word problem. Begin your reply with a strategy tag: [cot] to reason step by step, "
    "[l2m] to split it into sub-questions and answer them in order (both end with \"The answer is N.\"), "
    "or [pot] to write a Python program that stores the result in a variable named answer."
)
_TAG_USES = {"cot": "[cot] to reason step by step",
             "l2m": "[l2m] to split it into sub-questions and answer them in order",
             "pot": "[pot] to write a Python program that stores the result in a variable named answer"}
# The strategies a tagged student may use in the current run (RunContext.stage sets the recipe's): its prompt
# offers only those, and a `[pot]` reply where PoT is not among them gets no answer: its program never runs
# (RunContext checked the sandbox only where the recipe runs programs). Outside a run (`toolkit eval`): all three.
_STUDENT_STRATEGIES: ContextVar[tuple[str, ...]] = ContextVar("student_strategies", default=STRATEGIES)

# Our own worked examples, one problem solved three ways: they fix the formats the parsers read.
_SHOTS = [
    "A baker makes 24 muffins in the morning and 18 in the afternoon. He sells 30 of them. "
    "How many muffins are left?",
    "Tickets cost $7 each. Maria buys 4 tickets and pays with a $50 bill. How much change does she get?",
]
_SOLUTIONS = {
    "cot": [
        "He makes 24 + 18 = 42 muffins.\nAfter selling 30, he has 42 - 30 = 12 muffins left.\nThe answer is 12.",
        "4 tickets cost 4 * 7 = 28 dollars.\nHer change is 50 - 28 = 22 dollars.\nThe answer is 22.",
    ],
    "l2m": [
        "Sub-question 1: How many muffins does he make in total?\nAnswer 1: 24 + 18 = 42 muffins.\n"
        "Sub-question 2: How many are left after he sells 30?\nAnswer 2: 42 - 30 = 12 muffins.\nThe answer is 12.",
        "Sub-question 1: How much do the 4 tickets cost?\nAnswer 1: 4 * 7 = 28 dollars.\n"
        "Sub-question 2: How much change does she get from $50?\nAnswer 2: 50 - 28 = 22 dollars.\nThe answer is 22.",
    ],
    "pot": [
        "```python\nmorning = 24\nafternoon = 18\nsold = 30\nanswer = morning + afternoon - sold\n```",
        "```python\nprice = 7\ntickets = 4\npaid = 50\nanswer = paid - price * tickets\n```",
    ],
}
_INSTRUCTIONS = {"cot": COT_INSTRUCTION, "l2m": L2M_INSTRUCTION, "pot": POT_INSTRUCTION}


def _check(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def teacher_messages(question: str, strategy: str = "cot") -> Messages:
    """Few-shot chat messages asking the teacher to solve `question` with `strategy`."""
    _check(strategy)
    messages = [{"role": "system", "content": _INSTRUCTIONS[strategy]}]
    for q, a in zip(_SHOTS, _SOLUTIONS[strategy]):
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": question})
    return messages


def student_messages(question: str) -> Messages:
    """Zero-shot messages a CoT-only student is trained on and evaluated with (the same in both)."""
    return [{"role": "system", "content": COT_INSTRUCTION}, {"role": "user", "content": question}]


@contextmanager
def student_strategies(strategies: list[str] | tuple[str, ...]) -> Iterator[None]:
    """Within the block, a tagged student may use only `strategies` (the recipe's): see _STUDENT_STRATEGIES."""
    token = _STUDENT_STRATEGIES.set(tuple(s for s in STRATEGIES if s in strategies))
    try:
        yield
    finally:
        _STUDENT_STRATEGIES.reset(token)


def tagged_instruction(strategies: list[str] | tuple[str, ...]) -> str:
    """The tagged student's system prompt, offering exactly `strategies` (all three: TAGGED_INSTRUCTION)."""
    chosen = [s for s in STRATEGIES if s in strategies]
    if tuple(chosen) == STRATEGIES:
        return TAGGED_INSTRUCTION
    uses = [_TAG_USES[s] for s in chosen]
    worded = [i for i, s in enumerate(chosen) if s != "pot"]
    if worded:
        uses[worded[-1]] += ' (both end with "The answer is N.")' if len(worded) == 2 else \
            ' (ending with "The answer is N.")'
    offer = uses[0] if len(uses) == 1 else ", ".join(uses[:-1]) + " or " + uses[-1]
    return f"Solve the math word problem. Begin your reply with a strategy tag: {offer}."


def tagged_messages(question: str, force: str | None = None,
                    strategies: list[str] | tuple[str, ...] | None = None) -> Messages:
    """The multi-strategy student's prompt, offering `strategies` (default: the current run's, see
    student_strategies); `force` puts that strategy's tag at the start of the assistant turn (a trailing
    assistant message, which generators continue rather than close)."""
    offered = _STUDENT_STRATEGIES.get() if strategies is None else strategies
    messages = [{"role": "system", "content": tagged_instruction(offered)}, {"role": "user", "content": question}]
    if force is not None:
        _check(force)
        messages.append({"role": "assistant", "content": TAGS[force] + "\n"})
    return messages


def is_tagged(strategies: list[str] | tuple[str, ...]) -> bool:
    """A student learns tags when it learns more than plain CoT (a CoT-only recipe keeps the plain prompt)."""
    return tuple(strategies) != ("cot",)


def training_prompt(question: str, strategies: list[str] | tuple[str, ...]) -> Messages:
    """The prompt a recipe's student is trained, sampled and evaluated with (it offers only `strategies`)."""
    return tagged_messages(question, strategies=strategies) if is_tagged(strategies) else student_messages(question)


def training_completion(strategy: str, body: str, strategies: list[str] | tuple[str, ...]) -> str:
    """The target reply: the cleaned solution, after its strategy tag when the student is tagged."""
    return f"{TAGS[strategy]}\n{body}" if is_tagged(strategies) else body


_ANSWER_LINE = re.compile(r"the\s+(?:final\s+)?answer\s+is[^\n]*", re.IGNORECASE)
_SUBQUESTION = re.compile(r"^\s*(?:\*\*)?sub-?question\s*\d*\s*[:.]", re.IGNORECASE | re.MULTILINE)


def clean_rationale(text: str) -> str | None:
    """The rationale up to and including its first "The answer is N." line; None if it has none.

    Teachers often keep talking after the answer (a second problem, notes); the student should
    learn to stop there.
    """
    match = _ANSWER_LINE.search(text)
    if match is None or extract_strict(match.group(0)) is None:
        return None
    body = text[: match.start()].strip()
    answer = extract_strict(match.group(0))
    final = f"The answer is {answer}."
    return f"{body}\n{final}" if body else final


def clean_l2m(text: str) -> str | None:
    """An L2M solution cut after its answer line; None unless it poses at least one sub-question."""
    cleaned = clean_rationale(text)
    return cleaned if cleaned and _SUBQUESTION.search(cleaned) else None


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_ASSIGNS_ANSWER = re.compile(r"^answer\s*(?::[^=\n]*)?=(?!=)", re.MULTILINE)  # also `answer: float = ...`


def extract_program(text: str) -> str | None:
    """The Python program in a reply: the first code block that assigns `answer` (an unclosed block,
    cut by the token limit, counts), else the reply itself when it assigns `answer`; None otherwise."""
    blocks = [m.group(1) for m in _FENCE.finditer(text)]
    for code in blocks + ([text] if not blocks else []):
        code = code.strip("\n")
        if _ASSIGNS_ANSWER.search(code):
            try:
                compile(code, "<pot>", "exec")
            except (SyntaxError, ValueError):
                continue
            return code
    return None


def clean_program(text: str) -> str | None:
    """A PoT reply as the student learns it: the program in one ```python block; None without one."""
    code = extract_program(text)
    return f"```python\n{code}\n```" if code else None


def clean_solution(strategy: str, text: str) -> str | None:
    """The trainable form of one `strategy` solution, or None when it does not follow the format."""
    _check(strategy)
    return {"cot": clean_rationale, "l2m": clean_l2m, "pot": clean_program}[strategy](text)


def split_tag(text: str) -> tuple[str | None, str]:
    """(strategy, rest) of a tagged reply; (None, text) when it does not start with a known tag."""
    stripped = text.lstrip()
    for strategy, tag in TAGS.items():
        if stripped.lower().startswith(tag):
            return strategy, stripped[len(tag):].lstrip("\n ")
    return None, text


def run_answer(code: str, timeout_s: float = 3.0) -> str | None:
    """The normalised `answer` of a program run in the sandbox; None when it fails or sets none."""
    result = run_program(code, timeout_s=timeout_s)
    return normalize_number(result.answer) if result.answer is not None else None


def final_answer(strategy: str, text: str) -> tuple[str | None, str | None]:
    """(strategy used, normalised final answer) of a student or teacher reply.

    `strategy` is cot, l2m or pot for a reply known to follow that strategy (a forced tag: the
    reply is what came after it), or auto for a tagged reply whose tag names the strategy (an
    untagged reply is read as CoT). CoT and L2M answers are read strictly after the answer
    marker; a PoT program is executed in the sandbox.
    """
    if strategy == "auto":
        chosen, text = split_tag(text)
        strategy = chosen or "cot"
        if strategy == "pot" and "pot" not in _STUDENT_STRATEGIES.get():
            return strategy, None  # PoT where the recipe does not allow it: no answer, and no program runs
    _check(strategy)
    if strategy == "pot":
        code = extract_program(text)
        return strategy, run_answer(code) if code else None
    return strategy, extract_strict(text)


def eval_prompt(question: str, strategy: str) -> Messages:
    """The evaluation prompt: `cot` the plain CoT prompt (a CoT-only student); `l2m`/`pot` the tagged
    prompt with that tag forced; `auto` the tagged prompt, the student picks (both offering the run's strategies)."""
    if strategy == "cot":
        return student_messages(question)
    return tagged_messages(question, force=None if strategy == "auto" else strategy)


def strategy_stats(chosen: list[str], correct: list[bool]) -> dict[str, dict]:
    """Per strategy: how often it was chosen (count and share) and the accuracy when chosen."""
    n = len(chosen)
    out = {}
    for s in STRATEGIES:
        hits = [ok for c, ok in zip(chosen, correct) if c == s]
        out[s] = {"chosen": len(hits), "share": len(hits) / n if n else 0.0, "correct": sum(hits),
                  "accuracy": sum(hits) / len(hits) if hits else None}
    return out


def final_answers(strategy: str, texts: list[str], workers: int = 2) -> list[tuple[str, str | None]]:
    """final_answer over many replies; the PoT programs among them run `workers` sandboxes at a time."""
    if strategy != "auto":
        _check(strategy)
    parsed = []
    for text in texts:
        chosen, body = split_tag(text) if strategy == "auto" else (strategy, text)
        parsed.append((chosen or "cot", body))
    # `auto` reads a student's own choice: a [pot] reply where the run does not allow PoT gets no answer
    barred = {i for i, (s, _) in enumerate(parsed)
              if strategy == "auto" and s == "pot" and "pot" not in _STUDENT_STRATEGIES.get()}
    programs = {i: extract_program(body) for i, (s, body) in enumerate(parsed) if s == "pot" and i not in barred}
    runnable = [i for i, code in programs.items() if code]
    results = run_programs([programs[i] for i in runnable], workers=workers, timeout_s=3.0) if runnable else []
    ran = {i: normalize_number(r.answer) if r.answer is not None else None for i, r in zip(runnable, results)}
    return [(s, None if i in barred else ran.get(i) if s == "pot" else extract_strict(body))
            for i, (s, body) in enumerate(parsed)]


def solution_answers(solutions: list[tuple[str, str | None]], workers: int = 2) -> list[str | None]:
    """The answers of cleaned (strategy, solution) pairs (None where the solution is None); PoT
    programs are executed, `workers` at a time."""
    out: list[str | None] = [None] * len(solutions)
    for strategy in STRATEGIES:
        idx = [i for i, (s, text) in enumerate(solutions) if s == strategy and text is not None]
        if idx:
            for i, (_, answer) in zip(idx, final_answers(strategy, [solutions[i][1] for i in idx], workers)):
                out[i] = answer
    return out

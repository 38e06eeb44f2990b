"""FDD question generation: the teacher prompts for new problems and the parsing of its replies."""
from __future__ import annotations

import json
import re
from itertools import islice

from toolkit.data.problems import Problem
from toolkit.data.strategies import Messages

# Short on purpose: the teacher may be a 0.5B model on CPU, where every prompt token costs time.
_SYSTEM = "You write new math word problems for students."
_FORMAT = "Reply with a numbered list, one problem per item, questions only, no answers or solutions."
_HARDER = ("Write {m} harder {noun} of this problem. Each needs more steps or more quantities "
           "and must still have a whole-number answer.")
_SIMILAR = "Write {m} new {noun} of similar difficulty to this one but about a different everyday topic."

# Our own worked example (one user/assistant pair) fixes the reply format the parser reads best.
SHOT_PROBLEM = "A baker makes 24 muffins and sells 15 of them. How many muffins are left?"
_SHOT_HARDER = (
    "1. A baker makes 24 muffins in the morning and 18 in the afternoon. He sells 15 muffins and "
    "gives 6 to his neighbours. How many muffins are left?\n"
    "2. A baker makes 3 trays of 12 muffins each. He sells 20 muffins and gives away half of the "
    "rest. How many muffins does he have left?"
)
_SHOT_SIMILAR = (
    "1. A library has 32 books on a shelf and lends out 19 of them. How many books are still on "
    "the shelf?\n"
    "2. Lena picks 45 strawberries and eats 12 of them. How many strawberries does she have now?"
)


def writer_messages(system: str, template: str, noun: str, fmt: str, shot: str, problem: Problem,
                    m: int) -> Messages:
    """A question writer's chat: `system`, then the worked example (SHOT_PROBLEM answered by `shot`), then the
    request for m new problems from `problem`; the request is `template` (with {m} and {noun}) and `fmt`."""
    if m < 1:
        raise ValueError(f"the number of new problems must be at least 1, got {m}")

    def request(question: str, count: int) -> str:
        ask = template.format(m=count, noun=noun if count == 1 else noun + "s")
        return f"{ask}\n\nProblem: {question}\n\n{fmt}"

    return [
        {"role": "system", "content": system},
        {"role": "user", "content": request(SHOT_PROBLEM, 2)},
        {"role": "assistant", "content": shot},
        {"role": "user", "content": request(problem.question, m)},
    ]


def harder_messages(problem: Problem, m: int) -> Messages:
    """Chat messages asking the teacher for m harder variants of `problem` (for easy problems)."""
    return writer_messages(_SYSTEM, _HARDER, "version", _FORMAT, _SHOT_HARDER, problem, m)


def similar_messages(problem: Problem, m: int) -> Messages:
    """Chat messages asking the teacher for m new problems as hard as `problem` (for hard problems)."""
    return writer_messages(_SYSTEM, _SIMILAR, "problem", _FORMAT, _SHOT_SIMILAR, problem, m)


# Teacher replies are capped by max_tokens, so this only bounds the work on pathological input.
_MAX_CHARS = 100_000
_MIN_WORDS, _MAX_WORDS = 6, 120

# Item markers, matched against a line without its indentation, strongest first: when a reply
# has labelled items ("Problem 2:"), plain numbers ("1.") are solution steps inside them; when it
# has numbered items, bullets are sub-points. Every optional part starts with a character that
# is not a space, so a long run of spaces cannot make the regex backtrack quadratically.
_BOLD = r"(?:(?:\*\*|__)\s*)?"
_AFTER_NUMBER = rf"\s*(?:[.):\-]\s*)?{_BOLD}(?:[.:\-]\s*)?{_BOLD}"
_LABELLED = re.compile(
    rf"(?:[-*•+]\s+)?(?:#{{1,6}}\s*)?{_BOLD}(?:(?:problem|question)\s*(?:#\s*)?|q)\d{{1,3}}(?!\d){_AFTER_NUMBER}",
    re.IGNORECASE,
)
_NUMBERED = re.compile(rf"(?:#{{1,6}}\s*)?{_BOLD}(?:\(?\d{{1,3}}[.)](?!\d)|\d{{1,3}}:(?=\s)){_AFTER_NUMBER}")
_BULLET = re.compile(r"[-*•+]\s+")
_INTRO = re.compile(
    r"^\s*(?:here\s+(?:is|are)|sure\b|certainly|okay\b|ok\b|of course|absolutely|"
    r"below\s+(?:is|are))", re.IGNORECASE)
_OUTRO = re.compile(
    r"^\s*(?:i hope|hope (?:this|these)|let me know|feel free|good luck|enjoy|"
    r"these (?:problems|questions)|note\s*:)", re.IGNORECASE)
# Where a solution or answer starts; it and everything after it is not part of the question.
_SOLUTION = re.compile(
    r"\b(?:solutions?|answers?|explanation|hint)[*_\s]*[:=]|\bstep\s*1\b|"
    r"\bthe\s+(?:final\s+)?answer\s+is\b|####",
    re.IGNORECASE,
)
_SOLUTION_START = re.compile(r"^\s*[*_#(\[]*(?:solutions?|answers?|explanation|hint|step\s*1)\b",
                             re.IGNORECASE)
_LEAD_LABEL = re.compile(r"^(?:(?:new|harder|similar)\s+)?(?:problem|question)\s*(?:\d+\s*)?[:.\-]\s*",
                         re.IGNORECASE)
_ASKS = re.compile(r"\b(?:how\s+(?:many|much|long|far|old)|what|which|find|calculate|compute|determine)\b",
                   re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
# JSON is taken only when its bracket opens a line, so "[2] apples" in prose is not a list.
_JSON_START = re.compile(r"^[ \t]*([\[{])", re.MULTILINE)


def _json_items(text: str) -> list[object] | None:
    """The items of a JSON reply (a list, or an object holding one), else None."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    # A few tries only: each parses up to the end of the text, and a reply may open many lines with "[".
    for start in islice(_JSON_START.finditer(body), 3):
        close = "]" if start.group(1) == "[" else "}"
        end = body.rfind(close)
        if end <= start.start(1):
            continue
        try:
            data = json.loads(body[start.start(1):end + 1])
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            continue
        if isinstance(data, dict):  # {"questions": [...]} or a single {"question": ...}
            fields = {str(k).lower(): v for k, v in data.items()}
            data = next((fields[k] for k in ("questions", "problems") if isinstance(fields.get(k), list)), data)
        items = data if isinstance(data, list) else [data]
        if any(isinstance(x, (str, dict)) for x in items):
            return items
    return None


def _json_text(item: object) -> str:
    if isinstance(item, dict):
        fields = {str(k).lower(): v for k, v in item.items()}
        item = fields.get("question", fields.get("problem"))
    return item if isinstance(item, str) else ""


def _text_items(lines: list[str]) -> list[str]:
    """Split a plain-text reply into items, one string per item with its lines joined."""
    marker = next((rx for rx in (_LABELLED, _NUMBERED, _BULLET) if any(rx.match(ln.lstrip()) for ln in lines)),
                  None)
    items: list[list[str]] = []
    current: list[str] | None = None  # the item being read; None while reading stray text
    blank = has_body = in_solution = False
    for line in lines:
        if not line.strip():
            blank = True
            continue
        match = marker.match(line.lstrip()) if marker else None
        intro = None if match else _INTRO.match(line)
        if match or (intro and marker is None and line.partition(":")[2].strip()):
            first = line.lstrip()[match.end():] if match else line.partition(":")[2]
            current = [first]
            items.append(current)
            has_body, in_solution = bool(first.strip()), False
        elif intro or _OUTRO.match(line):
            current = None
        elif current is not None and (in_solution or not blank or line[:1].isspace() or not has_body
                                      or _SOLUTION_START.match(line)):
            # A continuation: no blank line before it, an indented paragraph, the body under a
            # bare "Problem 1:" label, or solution text (which clean_question cuts off).
            current.append(line)
            has_body = True
        elif marker is None:
            current = [line]  # without markers, every paragraph is a problem of its own
            items.append(current)
            has_body, in_solution = True, False
        else:
            current = None  # stray text between or after the items
        if current is not None and _SOLUTION.search(line):
            in_solution = True  # the rest until the next marker is solution, however it is laid out
        blank = False
    return [" ".join(item) for item in items]


def clean_question(text: str) -> str:
    """A question item as kept: any solution after it cut, markup and a leading label dropped."""
    cut = _SOLUTION.search(text)
    if cut:
        text = text[:cut.start()].rstrip(" \t\n*_#([")  # with the markup that opened it: "**Answer:**"
    if "?" in text:
        text = text[:text.rindex("?") + 1]  # a word problem ends with its question
    text = " ".join(text.replace("**", "").replace("__", "").replace("`", "").split())
    return _LEAD_LABEL.sub("", text).strip(" \"'“”*-")


def well_formed(question: str) -> bool:
    """A digit, something asked, and 6 to 120 words."""
    words = len(question.split())
    return (_MIN_WORDS <= words <= _MAX_WORDS and any(c.isdigit() for c in question)
            and ("?" in question or _ASKS.search(question) is not None))


def parse_questions(text: str, m: int) -> tuple[list[str], int]:
    """At most m questions from a teacher reply, and how many malformed items were dropped.

    Reads numbered, labelled ("Problem 1:") and bulleted lists, JSON lists of strings or of
    {"question": ...} objects, and plain paragraphs; drops preamble, sign-offs and any solution
    after a question. An item is malformed when it has no digit, does not ask anything, or has
    fewer than 6 or more than 120 words. Never raises.
    """
    if not isinstance(text, str):
        return [], 0
    text = text[:_MAX_CHARS]
    raw = _json_items(text)
    items = [_json_text(x) for x in raw] if raw is not None else _text_items(text.splitlines())
    questions, malformed = [], 0
    for item in items:
        question = clean_question(item)
        if well_formed(question):
            questions.append(question)
        else:
            malformed += 1
    return questions[:max(m, 0)], malformed

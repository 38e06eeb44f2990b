"""A fault-injecting OpenAI-compatible teacher on 127.0.0.1: seeded faults, right answers, a request log.

Run as `python -m tests.fault_teacher --log FILE [--seed S] [--rates JSON] ...`; it prints `PORT n`
once it listens. Each POST /v1/chat/completions is one *attempt* at a request body; whether the
attempt fails, and how, is drawn from `random.Random(seed, body digest, attempt number)`, so the
schedule is the same whatever order the client sends in. Faults:

  rate_limit  429 with a Retry-After header (`--retry-after` seconds)
  server_error 500 with an error body
  hang        no answer for `--hang-s` seconds, then the connection closes (past the client timeout)
  disconnect  a 200 whose body stops half way: the connection closes mid-stream
  malformed   a 200 whose body is not JSON
  empty       a 200 with `choices: []`

A body that has failed `--max-faults` times is answered from then on, so a seeded schedule cannot
exhaust a client's retries by chance. Answers are derived from the request: a solve request gets a
rationale ending in the right number for the arithmetic question it asks (wrong for one seed in
four, so votes and answer filters have something to do); a question-writing request gets new
arithmetic word problems this server can solve. With `--pot-programs` a PoT solve request (its
system prompt asks for a Python program) gets a program that sets `answer` to that number instead;
`--script` rules (JSON, see `scripted`) give chosen questions, strategies and sample seeds a fixed
reply. Every attempt is one JSON line in the log (`body`, `attempt`, `fault`, `auth`, `t0` arrival,
`t` end); `fault` is "ok" once the answer was written whole,
and such a line also holds the `usage` the reply reported (prompt words, reply words).

With `--api-key-env VAR`, a request without `Authorization: Bearer $VAR` is refused with 401; with `--echo-auth`
every error body repeats the request's key and its Authorization header, as careless servers do.
POST /_control takes JSON: `down` (true: every request is refused with 503), `stall_after` (after
that many answered requests, hold every new one unanswered until the next control call; logged as
"stalled"), `rates`. The tests stop the server by its PID.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from toolkit.core.lifetime import ends_with_this_process

FAULTS = ("rate_limit", "server_error", "hang", "disconnect", "malformed", "empty")
_NAMES = ("Tom", "Lena", "Omar", "Mia", "Ravi", "Zoe", "Ken", "Ada")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "cards", "shells", "stamps", "coins")


def digest(body: dict) -> str:
    """Identity of a request body: the same bytes a client would send for the same cache key."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def solve(question: str) -> int:
    """The answer to the arithmetic questions this server asks and is asked (tests/conftest EASY too)."""
    nums = [int(x) for x in re.findall(r"\d+", question)]
    if not nums:
        return 0
    if re.search(r"\btimes\b|\beach\b", question):
        out = 1
        for x in nums:
            out *= x
        return out
    if re.search(r"\bminus\b|gives away|\bleft\b", question):
        return nums[0] - sum(nums[1:])
    return sum(nums)


def _new_questions(m: int, harder: bool, rng: random.Random) -> list[str]:
    out = []
    for _ in range(m):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b, c = rng.randint(20, 90), rng.randint(2, 19), rng.randint(2, 9)
        if harder:
            out.append(f"{name} has {a} {item}, gets {b} more on Monday and {c} more on Tuesday. "
                       f"How many {item} does {name} have now?")
        elif rng.random() < 0.5:
            out.append(f"{name} has {a} {item} and gives away {b} of them. How many {item} are left?")
        else:
            out.append(f"{name} buys {c} bags with {b} {item} in each bag. How many {item} does {name} buy?")
    return out


def _program(question: str) -> str:
    """A program that computes solve(question) from the question's own numbers."""
    nums = re.findall(r"\d+", question) or ["0"]
    if re.search(r"\btimes\b|\beach\b", question):
        return "answer = " + " * ".join(nums)
    if re.search(r"\bminus\b|gives away|\bleft\b", question):
        return "answer = " + " - ".join(nums)
    return "answer = " + " + ".join(nums)


def strategy_of(body: dict) -> str:
    """Which strategy a solve request asks for, read from its system prompt (toolkit/data/strategies.py)."""
    system = next((m["content"] for m in body.get("messages", []) if m.get("role") == "system"), "")
    return "pot" if "Python program" in system else "l2m" if "sub-questions" in system else "cot"


def scripted(body: dict, script: list[dict]) -> str | None:
    """The reply of the first script rule that fits the request, else None. A rule is {"match": text in the
    last user message, "reply": text} with optional "strategy" (cot, l2m, pot) and "seed" (the sample's)."""
    user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
    strategy, seed = strategy_of(body), body.get("seed")
    for rule in script:
        if rule["match"] in user and rule.get("strategy", strategy) == strategy and rule.get("seed", seed) == seed:
            return rule["reply"]
    return None


def answer(body: dict, script: list[dict] | None = None, pot_programs: bool = False) -> str:
    """The deterministic reply to a chat request: a scripted reply, new problems, a program (a PoT request,
    with `pot_programs`) or a rationale."""
    reply = scripted(body, script or [])
    if reply is not None:
        return reply
    user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
    rng = random.Random(digest(body))
    ask = re.match(r"Write (\d+) (harder|new)", user)
    if ask:
        qs = _new_questions(int(ask.group(1)), ask.group(2) == "harder", rng)
        if "variable named answer" in user:  # distill.question_check program: each question with its program
            return "\n".join(f"Problem {i + 1}: {q}\n```python\n{_program(q)}\n```" for i, q in enumerate(qs))
        return "\n".join(f"{i + 1}. {q}" for i, q in enumerate(qs))
    right = solve(user)
    wrong = int(body.get("seed", 0)) % 4 == 3  # one sample index in four answers wrong
    nums = re.findall(r"\d+", user)
    if pot_programs and strategy_of(body) == "pot":
        return f"```python\nnumbers = [{', '.join(nums)}]\nanswer = {right + 1 if wrong else right}\n```"
    work = f"From the numbers {', '.join(nums)} we work it out step by step." if nums else "We think."
    return f"{work}\nThe answer is {right + 1 if wrong else right}."


def usage(body: dict, text: str) -> dict[str, int]:
    """The reply's token counts, made up but request-dependent: words of every message, words of the reply."""
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _State:
    def __init__(self, args: argparse.Namespace):
        self.seed = args.seed
        self.rates: dict[str, float] = json.loads(args.rates)
        self.retry_after = args.retry_after
        self.hang_s = args.hang_s
        self.delay_s = args.delay_s
        self.max_faults = args.max_faults
        self.api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
        self.echo_auth = args.echo_auth
        self.script: list[dict] = json.loads(args.script)
        self.pot_programs = args.pot_programs
        self.log = open(args.log, "a", buffering=1)
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.faults: dict[str, int] = {}
        self.answered = 0
        self.down = False
        self.stall_after: int | None = None
        self.release = threading.Event()

    def record(self, **row) -> None:
        with self.lock:
            self.log.write(json.dumps({**row, "t": time.time()}) + "\n")

    def draw(self, key: str) -> tuple[int, str]:
        """(attempt number, fault or "ok") for the next attempt at this body."""
        with self.lock:
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
            fault = "ok"
            if self.faults.get(key, 0) < self.max_faults:
                x, acc = random.Random(f"{self.seed}:{key}:{attempt}").random(), 0.0
                for name in FAULTS:
                    acc += self.rates.get(name, 0.0)
                    if x < acc:
                        fault = name
                        self.faults[key] = self.faults.get(key, 0) + 1
                        break
            return attempt, fault


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State

    def log_message(self, *args) -> None:  # the JSON log is the record; stderr stays quiet
        pass

    def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None,
              length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _error(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        if self.state.echo_auth:  # as careless servers do: the key, bare and as the header, in the error body
            auth = self.headers.get("Authorization") or ""
            message += f": {auth.removeprefix('Bearer ')} (request header Authorization: {auth})"
        self._send(code, json.dumps({"error": {"message": message, "type": "fault", "code": code}}).encode(),
                   headers)

    def do_GET(self) -> None:
        self._send(200, json.dumps({"object": "list", "data": [{"id": "fault", "object": "model"}]}).encode())

    def do_POST(self) -> None:
        st = self.state
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/_control":
            ctl = json.loads(raw)
            with st.lock:
                st.down = ctl.get("down", st.down)
                st.rates = ctl.get("rates", st.rates)
                st.stall_after = ctl.get("stall_after")
                st.release.set()  # whatever was stalled is let go (and dropped)
                st.release = threading.Event()
            return self._send(200, b"{}")
        body = json.loads(raw)
        key = digest(body)
        auth = self.headers.get("Authorization")
        auth_ok = None if st.api_key is None else auth == f"Bearer {st.api_key}"
        row = {"body": key, "model": body.get("model"), "seed": body.get("seed"), "auth": auth_ok,
               "t0": time.time()}
        if auth_ok is False:
            st.record(**row, attempt=-1, fault="unauthorized")
            return self._error(401, "Incorrect API key provided")
        if st.down:
            st.record(**row, attempt=-1, fault="down")
            return self._error(503, "the teacher is down")
        with st.lock:
            stall = st.stall_after is not None and st.answered >= st.stall_after
            release = st.release
        if stall:
            st.record(**row, attempt=-1, fault="stalled")
            release.wait(600)
            self.close_connection = True
            return
        attempt, fault = st.draw(key)
        row["attempt"] = attempt
        if fault == "rate_limit":
            self._error(429, "slow down", {"Retry-After": f"{st.retry_after:g}"})
        elif fault == "server_error":
            self._error(500, "internal error")
        elif fault == "hang":
            st.record(**row, fault=fault)
            time.sleep(st.hang_s)
            self.close_connection = True
            return
        elif fault == "malformed":
            self._send(200, b'{"id": "x", "choices": [{"message": ')
        elif fault == "empty":
            self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                        "model": body.get("model"), "choices": []}).encode())
        elif fault == "disconnect":
            full = self._completion(body)
            st.record(**row, fault=fault)
            self._send(200, full[: len(full) // 2], length=len(full))
            self.close_connection = True
            return
        else:
            time.sleep(st.delay_s)
            self._send(200, self._completion(body))
            with st.lock:
                st.answered += 1
            row["usage"] = usage(body, self._reply(body))
        st.record(**row, fault=fault)

    def _reply(self, body: dict) -> str:
        return answer(body, self.state.script, self.state.pot_programs)

    def _completion(self, body: dict) -> bytes:
        text = self._reply(body)
        return json.dumps({
            "id": "chatcmpl-" + digest(body), "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage(body, text),
        }).encode()


class FaultTeacher:
    """The server in a subprocess of its own, as a context manager; `rows()` reads its request log."""

    def __init__(self, log: Path, *, seed: int = 0, rates: dict[str, float] | None = None,
                 retry_after: float = 0.2, hang_s: float = 3.0, max_faults: int = 3,
                 api_key_env: str | None = None, delay_s: float = 0.0, echo_auth: bool = False,
                 script: list[dict] | None = None, pot_programs: bool = False):
        self.log = Path(log)
        self.args = ["--log", str(self.log), "--seed", str(seed), "--rates", json.dumps(rates or {}),
                     "--retry-after", str(retry_after), "--hang-s", str(hang_s), "--max-faults", str(max_faults),
                     "--delay-s", str(delay_s)]
        if api_key_env:
            self.args += ["--api-key-env", api_key_env]
        if echo_auth:
            self.args += ["--echo-auth"]
        if script:
            self.args += ["--script", json.dumps(script)]
        if pot_programs:
            self.args += ["--pot-programs"]
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FaultTeacher:
        root = Path(__file__).resolve().parents[1]
        # Bound to this process like the toolkit's own servers: a killed pytest, which never runs __exit__, left
        # one serving on 127.0.0.1 under init.
        cmd = ends_with_this_process([sys.executable, "-m", "tests.fault_teacher", *self.args], signal.SIGKILL)
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"fault teacher did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def control(self, **ctl) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/_control", data=json.dumps(ctl).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()

    def rows(self) -> list[dict]:
        if not self.log.is_file():
            return []
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]

    def answered(self) -> dict[str, int]:
        """Request body -> how many times it was answered whole."""
        out: dict[str, int] = {}
        for r in self.rows():
            if r["fault"] == "ok":
                out[r["body"]] = out.get(r["body"], 0) + 1
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rates", default="{}", help="JSON: fault name -> probability per attempt")
    p.add_argument("--retry-after", type=float, default=0.2, help="seconds in a 429's Retry-After")
    p.add_argument("--hang-s", type=float, default=3.0)
    p.add_argument("--max-faults", type=int, default=3)
    p.add_argument("--delay-s", type=float, default=0.0, help="seconds before each good answer")
    p.add_argument("--api-key-env", default=None, help="check `Authorization: Bearer $VAR` (logged as auth)")
    p.add_argument("--echo-auth", action="store_true", help="error bodies repeat the request's key and header")
    p.add_argument("--script", default="[]", help="JSON list of scripted replies (see `scripted`)")
    p.add_argument("--pot-programs", action="store_true", help="answer PoT requests with a Python program")
    args = p.parse_args()
    Handler.state = _State(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

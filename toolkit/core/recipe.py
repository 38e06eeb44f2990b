"""The recipe: a typed schema for one YAML file, its loading with line-numbered errors, and overrides."""
from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toolkit.core.errors import RecipeError
from toolkit.core.flags import thread_sweep

log = logging.getLogger(__name__)

class _Section(BaseModel):
    # Unknown keys are errors: a typo such as `epoch:` must not silently fall back to a default.
    # NaN and infinity are never meant (an `.inf` learning rate passes `gt=0`).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataSource(_Section):
    """Where problems come from: exactly one of `suite`, `path` or `hf`."""

    suite: str | None = Field(None, description=(
        "a built-in suite read under `data.root` (gsm8k, gsm8k_train, svamp, asdiv, multiarith, addsub, singleeq), "
        "or several joined by commas (\"multiarith,svamp\"); repeated questions across them are dropped"))
    path: str | None = Field(None, description=(
        "a data file (GSM8K jsonl, SVAMP/MultiArith json, ASDiv xml, plain JSONL/CSV), relative to the recipe file"))
    format: str | None = Field(None, description=(
        "the file's format when it cannot be told from the file (gsm8k, svamp, asdiv, multiarith, jsonl, csv, json)"))
    hf: str | None = Field(None, description=(
        "a Hugging Face dataset id (needs the hub and `pip install datasets`), with `hf_config` and `hf_split`"))
    hf_config: str | None = Field(None, description="the Hugging Face dataset's configuration (with `hf`)")
    hf_split: str = Field("train", description="the Hugging Face dataset's split (with `hf`)")
    question_field: str = Field("question", description="the question's field name in plain JSONL/CSV/HF data")
    answer_field: str = Field("answer", description="the gold answer's field name in plain JSONL/CSV/HF data")

    @model_validator(mode="after")
    def _exactly_one(self) -> DataSource:
        given = [k for k in ("suite", "path", "hf") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of suite, path or hf")
        return self


class DataConfig(_Section):
    """Training and held-out problems."""

    root: str = Field("data", description=(
        "folder holding the built-in suites, relative to the recipe file; the environment variable TOOLKIT_DATA "
        "overrides it. A suite in neither is read from the user cache, else downloaded there and checked against "
        "its pinned sha256 (docs/data.md)"))
    train: DataSource = Field(description="the source of training problems (see DataSource)")
    heldout: DataSource | None = Field(None, description=(
        "the source of held-out problems; absent: they are split off `train` (disjoint)"))
    train_size: int = Field(64, ge=1, description="how many training problems to use, drawn by a seeded shuffle")
    heldout_size: int = Field(50, ge=1, description="how many held-out problems to use, drawn by a seeded shuffle")


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _check_url(url: str) -> str:
    # The URL lands in the manifest, logs and error messages, so it must not carry a secret: no
    # user:key@, no ?api-key=…, no #… (the value is never echoed back, see _describe).
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials; put the key in an environment variable named by "
                         "api_key_env")
    if "?" in url or "#" in url:
        raise ValueError("must not have a query string or a fragment (a key there would be written to the "
                         "manifest); put the key in an environment variable named by api_key_env")
    return url


def _plain_http_host(url: str | None) -> str | None:
    """The host of an http:// URL that leaves this machine (the key and prompts travel unencrypted)."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http" or host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return host


class EndpointConfig(_Section):
    """One OpenAI-compatible endpoint of a teacher served from several places."""

    base_url: str = Field(description="the endpoint (e.g. http://10.0.0.5:8000/v1)")
    weight: float = Field(1.0, gt=0, description=(
        "its share of the requests relative to the others (2 takes twice the requests of 1)"))
    concurrency: int | None = Field(None, ge=1, description=(
        "requests in flight at once on this endpoint; absent: the teacher's concurrency"))
    api_key_env: str | None = Field(None, pattern=_ENV_NAME, description=(
        "the NAME of the environment variable holding this endpoint's key; absent: the teacher's api_key_env"))

    _url = field_validator("base_url")(_check_url)


class PriceConfig(_Section):
    """What the teacher's tokens cost, for the run's ledger and the dry run's estimate."""

    input: float = Field(ge=0, description="USD per million prompt (input) tokens")
    output: float = Field(ge=0, description="USD per million completion (output) tokens")


class TeacherConfig(_Section):
    """The teacher LLM that writes rationales."""

    model: str = Field(description=(
        "a model reference: a GGUF file or `pkg:NAME` (a package-shipped model) for the llama.cpp backend, or the "
        "model name the OpenAI-compatible endpoint serves"))
    backend: Literal["llama.cpp", "openai"] = Field("llama.cpp", description=(
        "`llama.cpp` starts a local llama.cpp server on 127.0.0.1 for a GGUF model; `openai` talks to any "
        "OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, Ollama, llama.cpp servers)"))
    base_url: str | None = Field(None, description="the endpoint for `openai` (e.g. http://127.0.0.1:8000/v1)")
    endpoints: list[EndpointConfig] | None = Field(None, min_length=1, description=(
        "instead of `base_url`, several endpoints serving the same model, each `{base_url, weight, concurrency, "
        "api_key_env}` (see EndpointConfig). Requests are spread by weight over the endpoints that are up and have "
        "a free slot; a failed attempt moves at once to another endpoint, and an endpoint that fails 3 times in a "
        "row is skipped for 30 s. One that answers 401/403/404 is dropped while another endpoint is left. The "
        "cache key does not depend on which endpoint answered"))
    api_key_env: str = Field("OPENAI_API_KEY", pattern=_ENV_NAME, description=(
        "the NAME of the environment variable that holds the API key. Keys are read from the environment only: a "
        "recipe cannot hold one (an `api_key:` key is refused), and the key is never written to the manifest, "
        "logs or the request cache"))
    max_tokens: int = Field(256, ge=8, description="the longest rationale, in tokens")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature for the k rationales per problem")
    concurrency: int = Field(1, ge=1, description=(
        "requests in flight at once, per endpoint (a one-slot llama.cpp server gains nothing from more)"))
    timeout_s: float = Field(300.0, gt=0, description="per-attempt timeout, in seconds")
    max_retries: int = Field(4, ge=0, description=(
        "backoff rounds per request; each round tries every endpoint that is up once. The wait before a round "
        "honours the server's Retry-After, else doubles from `backoff_s` (jittered to 0.5–1.5×, at most 30 s). "
        "When a request still fails, no new request starts, those in flight finish into the cache, and the run "
        "ends with one message; run it again to resume"))
    backoff_s: float = Field(1.0, gt=0, le=60, description="the first backoff wait, in seconds")
    n_ctx: int = Field(2048, ge=256, description="context length of the local llama.cpp server, in tokens")
    threads: int | None = Field(None, ge=1, description="CPU threads of the local llama.cpp server; absent: all cores")
    server: Literal["llama_cpp.server", "llama-server"] = Field("llama_cpp.server", description=(
        "the local server program: `llama_cpp.server` (llama-cpp-python, one request at a time) or `llama-server` "
        "(llama.cpp's own, continuous batching over `slots`; on PATH or built by scripts/build-llama-tools.sh)"))
    slots: int = Field(1, ge=1, description=(
        "sequences `llama-server` decodes together (n_ctx tokens each); requests in flight are raised to at least "
        "this many. More than 1 needs `server: llama-server`"))
    # Left out of the recipe's digest and dump (the manifest's ledger records it): a price changes no
    # output, so adding one to a finished run's recipe still resumes it.
    price: PriceConfig | None = Field(None, exclude=True, description=(
        "`{input, output}`, USD per million input and output tokens (see PriceConfig): the manifest then gives "
        "the teacher's cost per stage and in total, and `--dry-run` an estimate; absent: token counts only"))

    _url = field_validator("base_url")(lambda v: v if v is None else _check_url(v))

    @model_validator(mode="before")
    @classmethod
    def _no_keys_in_recipes(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in ("api_key", "key", "token")):
            raise ValueError("API keys are not read from recipes: export the key in an environment "
                             "variable and name that variable in api_key_env")
        return data

    @model_validator(mode="after")
    def _openai_needs_url(self) -> TeacherConfig:
        if self.backend == "openai" and not (self.base_url or self.endpoints):
            raise ValueError("backend 'openai' needs base_url or endpoints")
        if self.base_url and self.endpoints:
            raise ValueError("give base_url or endpoints, not both")
        if self.backend == "llama.cpp" and (self.base_url or self.endpoints):
            raise ValueError("backend 'llama.cpp' serves the model itself; base_url/endpoints need backend 'openai'")
        # Slots would be silently ignored: llama_cpp.server decodes one request at a time, and a
        # remote endpoint's parallelism is its own (set `concurrency` for it instead).
        if self.slots > 1 and (self.backend != "llama.cpp" or self.server != "llama-server"):
            raise ValueError("slots > 1 needs backend 'llama.cpp' with server 'llama-server' "
                             "(llama_cpp.server answers one request at a time; for an endpoint set concurrency)")
        return self


class StudentConfig(_Section):
    """The student to distill into."""

    model: str = Field(description="a model reference: hub id, local HF folder, GGUF file or `pkg:NAME`")
    sampler: Literal["transformers", "vllm"] = Field("transformers", description=(
        "where the student's own answers (feedback and evaluation) are generated: `transformers` in this "
        "process, or `vllm`, a local vLLM server started for each stage on the base or the round's student (GPU; "
        "`pip install vllm`), asked on its completions endpoint with the text the prompt rule renders"))
    vllm_args: list[str] = Field(default_factory=list, description=(
        "extra command-line flags for that vLLM server, e.g. [--gpu-memory-utilization, \"0.5\"]"))
    sampler_concurrency: int = Field(256, ge=1, description="requests in flight to the vLLM server")


class SelfGuidedConfig(_Section):
    """SIKeD self-guided iterations, after the last FDD round: the current student solves every training
    problem itself, its correct solutions are mixed with the teacher's, and the mix retrains the student
    from the base checkpoint (as every round does)."""

    iterations: int = Field(1, ge=1, le=20, description="how many self-guided iterations")
    samples: int = Field(4, ge=1, description=(
        "k, the student's own solutions per training problem (on-policy sampling)"))
    temperature: float = Field(0.7, gt=0, le=2, description="the sampling temperature of those solutions")
    mixing: Literal["all", "alpha_schedule", "adaptive"] = Field("all", description=(
        "`all` (SIKeD's \"All\", as its reference code builds it): all teacher data plus all correct "
        "self-generated data; the teacher share alpha is observed and recorded per iteration. `alpha_schedule`: "
        "all self-generated data plus teacher data subsampled to the share `alpha`. `adaptive` keeps teacher data "
        "only for problems the student still fails (no correct sample)"))
    alpha: list[float] | None = Field(None, description=(
        "mixing `alpha_schedule` only: the teacher data's share of each iteration's training set, one value per "
        "iteration (e.g. [0.9, 0.5, 0.2]), a fraction in [0, 1]. Teacher rows are subsampled to reach it; when "
        "the student solved nothing, the teacher data is used whole"))
    sampling: Literal["free", "forced", "both"] = Field("free", description=(
        "how the student draws its own solutions: `free` (its own choice of strategy, `samples` per problem), "
        "`forced` (each recipe strategy's tag forced in turn, `samples` per problem and strategy, so strategies it "
        "stops choosing still yield data), `both` (the free samples and the forced ones). forced and both need a "
        "tagged student (more strategies than cot) and a backend that continues an assistant prefix (torch, "
        "genai or student.sampler vllm; not llama.cpp)"))
    backend: Literal["auto", "torch", "genai", "genai-int4", "llama.cpp"] = Field("auto", description=(
        "what the student samples with: `torch` (the trained folder in transformers, batched), `genai` / "
        "`genai-int4` (the student exported to onnxruntime-genai fp32 / int4 each iteration, batched C++ "
        "decoding), `llama.cpp` (exported to GGUF q8_0, one sequence at a time), or `auto`: torch on a GPU, else "
        "genai (torch when the export fails, noted in the stage). Speeds measured on a 2-core CPU: "
        "bench/README.md, \"Student self-sampling\""))
    max_new_tokens: int | None = Field(None, ge=8, description=(
        "longest sampled solution, in tokens; absent: eval.max_new_tokens"))

    @model_validator(mode="after")
    def _alpha_schedule(self) -> SelfGuidedConfig:
        if self.mixing != "alpha_schedule":
            if self.alpha is not None:
                hint = (" (all teacher data plus all correct own data; the share is observed): for a fixed "
                        "share per iteration write mixing: alpha_schedule" if self.mixing == "all" else "")
                raise ValueError(f"alpha applies to mixing 'alpha_schedule' only; remove it for "
                                 f"'{self.mixing}'{hint}")
            return self
        if self.alpha is None or len(self.alpha) != self.iterations:
            raise ValueError(f"mixing 'alpha_schedule' needs alpha, one teacher share per iteration "
                             f"({self.iterations})")
        if any(not 0 <= a <= 1 for a in self.alpha):
            raise ValueError(f"every alpha must lie in [0, 1], got {self.alpha}")
        return self

    @model_validator(mode="after")
    def _forced_needs_a_prefix_backend(self) -> SelfGuidedConfig:
        if self.sampling != "free" and self.backend == "llama.cpp":
            raise ValueError(f"sampling '{self.sampling}' forces a strategy tag as an assistant prefix, which "
                             "the llama.cpp sampler cannot continue; use backend torch, genai or auto")
        return self


class DistillConfig(_Section):
    """The method: feedback-driven distillation (FDD) over rounds, optionally several strategies and
    SIKeD self-guided iterations."""

    rounds: int = Field(1, ge=1, le=20, description=(
        "how many rounds; round 0 trains on teacher rationales for the seed problems, every later round first "
        "asks the previous student for feedback and grows the data (1 = round 0 only)"))
    paths_per_problem: int = Field(4, ge=1, description=(
        "k, reasoning paths the teacher writes per problem (FDD: more paths help)"))
    feedback_samples: int = Field(1, ge=1, description=(
        "student answers per training problem for feedback (1 = greedy); with more, a problem is easy when the "
        "fraction answered right reaches `feedback_threshold`"))
    feedback_threshold: float = Field(0.5, gt=0, le=1, description=(
        "with feedback_samples > 1: the fraction of right answers at which a problem counts as easy"))
    feedback_temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature when feedback_samples > 1")
    new_per_problem: int = Field(1, ge=1, le=20, description=(
        "m, new problems the teacher writes per training problem: harder variants of easy problems, new problems "
        "of similar difficulty for hard ones"))
    generate: list[Literal["harder", "similar"]] = Field(default_factory=lambda: ["harder", "similar"], description=(
        "which of those the teacher writes, for FDD's ablation: `harder` (variants of the problems the student got "
        "right), `similar` (new problems like those it got wrong), or both. The questions stage's counts give "
        "requests, parsed and kept questions of each kind"))
    question_temperature: float = Field(0.8, ge=0, le=2, description=(
        "sampling temperature of the teacher's question writing"))
    question_max_tokens: int = Field(300, ge=16, description="the longest question the teacher writes, in tokens")
    label_solves: int = Field(4, ge=1, description=(
        "n, teacher solutions per generated problem for the self-consistency vote"))
    vote_fraction: float = Field(0.5, gt=0, le=1, description=(
        "a generated problem is kept when its majority answer has at least this share of the n solutions "
        "(and at least vote_min votes)"))
    vote_min: int = Field(2, ge=1, description="the fewest votes a kept generated problem's majority answer has")
    label_check: Literal["none", "pot"] = Field("none", description=(
        "a second test of each generated problem's label. `none`: the vote alone decides. `pot` (cross-strategy "
        "agreement): the vote counts the CoT / L2M solutions only, and a problem that passes it is kept only when "
        "a strict majority of its PoT programs, run in the sandbox, give the same answer (a program that fails or "
        "sets no answer counts against: of one program, it must agree; of two, both; of three, two). The PoT "
        "programs are pot's share of the n solutions when pot is a strategy; otherwise (or when n is too small to "
        "reach pot) the teacher writes one extra program for each problem that passed the vote, at "
        "teacher.temperature. PoT rows enter training only when pot is a strategy. round-K/votes.jsonl records "
        "each problem's PoT answers and the check's verdict, the labels stage how many problems the check "
        "rejected"))
    question_check: Literal["none", "program"] = Field("none", description=(
        "how new questions are written. `none`: the teacher writes questions only (the vote alone labels them). "
        "`program` (answerable by construction): the teacher writes each new question together with a short "
        "Python program that computes its answer from the numbers the question states, in one request; a question "
        "is kept only when the program runs in the sandbox and yields a number, every number the program uses "
        "appears in the question, and the CoT label vote agrees with the program's result. "
        "round-K/questions.jsonl keeps each question's program and result; the questions stage counts what each "
        "test dropped"))
    round_source: Literal["generated", "originals", "auto"] = Field("generated", description=(
        "where a round after round 0 finds its new training problems. `generated`: FDD's teacher-written questions "
        "(harder / similar, above). `originals`: unused original problems of the training source (gold answers "
        "known), picked as originals_pick says; their teacher paths are kept when they reach the gold answer, as in "
        "round 0. `auto`: `originals` while unused originals remain, `generated` once they have run out "
        "(bench/results/fdd-cpu-powered: while originals remain, a generated round is the worse use of a teacher "
        "request)"))
    originals_pick: Literal["seeded", "wrong_first"] = Field("seeded", description=(
        "with round_source originals / auto, which unused originals a round takes. `seeded`: the next ones in the "
        "data seed's order (what a larger train_size would take). `wrong_first`: feedback-driven selection: the "
        "previous student answers the next 4 per problem to take (student compute only) and the round takes those "
        "it got wrong first, then those it got right. bench/results/fdd-selected measured wrong_first at -3.2 "
        "points (-7.2 to +0.8, p 0.15) against seeded at the same teacher budget, so seeded is the default"))
    originals_per_round: int | None = Field(None, ge=1, description=(
        "with round_source originals / auto, how many unused original problems a round adds; absent: "
        "new_per_problem per training problem, the count a generated round would ask for"))
    dedup_ngram: int = Field(3, ge=1, description=(
        "word n-gram length, in words, of the Jaccard similarity at which two problems are near-duplicates"))
    dedup_threshold: float = Field(0.7, gt=0, le=1, description=(
        "the word n-gram Jaccard similarity at which two problems are near-duplicates (only the first is kept)"))
    leakage_ngram: int = Field(13, ge=4, description=(
        "a generated problem sharing a word n-gram of this length, in words, with any evaluation suite question "
        "is dropped (13, the GPT-3 / lm-evaluation-harness contamination convention). Each round also writes "
        "round-K/leakage.json and leakage.png (FDD's Fig. 4): per suite, the histogram of each checked question's "
        "longest word n-gram shared with any suite question (0 to leakage_ngram words; the last bin is what is "
        "dropped)"))
    strategies: list[Literal["cot", "l2m", "pot"]] = Field(default_factory=lambda: ["cot"], min_length=1, description=(
        "how the teacher solves problems: `cot` (chain of thought), `l2m` (least-to-most: sub-questions, then "
        "answers), `pot` (a Python program that sets `answer`, checked by running it in the sandbox). "
        "paths_per_problem and label_solves are per strategy / spread over them. With more than `cot` the student "
        "learns to start its reply with a tag ([cot], [l2m], [pot]) and picks its own strategy at evaluation"))
    self_guided: SelfGuidedConfig | None = Field(None, description=(
        "SIKeD iterations after the last FDD round (see SelfGuidedConfig); absent: none"))
    # Left out of the recipe's digest and dump (the manifest records it apart): a run folder made before
    # the field existed still resumes, and a dump read back never turns `unsafe` on.
    sandbox: Literal["bwrap", "unsafe"] = Field("bwrap", exclude=True, description=(
        "how PoT programs run. `bwrap`: each in its own bubblewrap sandbox (namespaces, read-only minimal "
        "filesystem, no network, rlimits, seccomp); where that cannot be had the run stops before any teacher "
        "call, naming the fix. `unsafe`: where bubblewrap cannot confine them, run model-written programs as plain "
        "processes, with a loud warning and a note in the manifest"))

    @field_validator("generate")
    @classmethod
    def _generate_something(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one of harder, similar (an FDD round must write some problems)")
        if len(set(value)) != len(value):
            raise ValueError("a kind is named twice")
        return value

    @model_validator(mode="after")
    def _votes_possible(self) -> DistillConfig:
        if self.vote_min > self.label_solves:
            raise ValueError(f"vote_min {self.vote_min} can never be reached with label_solves {self.label_solves}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies repeat one: {self.strategies}")
        return self

    @model_validator(mode="after")
    def _label_check_has_a_vote(self) -> DistillConfig:
        if self.label_check == "none":
            return self
        if self.strategies == ["pot"]:
            raise ValueError("label_check pot checks PoT programs against the CoT / L2M majority, and strategies "
                             "[pot] has none; add cot or l2m to strategies, or use label_check: none")
        # Solve j uses strategy j mod m in the order cot, l2m, pot (toolkit/pipeline/fdd.py): pot, last, gets
        # solves m-1, 2m-1, ...; the vote counts the others.
        m = len(self.strategies)
        voters = self.label_solves - (len(range(m - 1, self.label_solves, m)) if "pot" in self.strategies else 0)
        if self.vote_min > voters:
            raise ValueError(f"vote_min {self.vote_min} can never be reached: label_check pot votes with the "
                             f"{voters} CoT / L2M solve(s) of label_solves {self.label_solves}; raise label_solves "
                             f"or lower vote_min")
        return self

    @model_validator(mode="after")
    def _forced_sampling_needs_tags(self) -> DistillConfig:
        sg = self.self_guided
        if sg is not None and sg.sampling != "free" and self.strategies == ["cot"]:
            raise ValueError(f"self_guided.sampling '{sg.sampling}' forces each strategy's tag, which only a "
                             "student of several strategies learns; add strategies or use sampling: free")
        return self


class TrainConfig(_Section):
    """Supervised fine-tuning of the student (from the base checkpoint every round): AdamW with linear warm-up
    then linear decay, loss on the answer tokens only, packed sequences."""

    epochs: float = Field(2.0, gt=0, description="passes over the packed training data")
    max_steps: int | None = Field(None, ge=1, description=(
        "stop after this many optimizer steps (overrides epochs when set)"))
    batch_size: int = Field(4, ge=1, description="packed sequences per optimizer step (the global batch)")
    seq_len: int = Field(256, ge=16, description="tokens per packed sequence")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0, description="AdamW's peak learning rate (after warm-up)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="the share of the steps spent warming up linearly")
    lora: int | None = Field(None, ge=1, description=(
        "when set, train LoRA adapters (peft) of this rank instead of all weights; absent: all weights"))
    threads: int | None = Field(None, ge=1, description="torch CPU threads; absent: all cores")
    checkpoint_every: int = Field(50, ge=0, description=(
        "save the whole training state every this many optimizer steps (0: never); a killed run resumes from the "
        "latest instead of starting the round's training over"))
    processes: int = Field(1, ge=1, description=(
        "data-parallel training processes on this machine (torchrun; gloo on CPU, nccl on GPUs, one GPU each); "
        "batch_size stays the global batch, so the result matches one process"))
    nodes: int = Field(1, ge=1, description=(
        "machines to train on: this machine is node 0 at master_addr:master_port and prints the torchrun command "
        "each other machine runs (the run folder must be on storage every machine sees)"))
    master_addr: str = Field("127.0.0.1", description="node 0's address, with nodes > 1")
    master_port: int = Field(29500, ge=1, le=65535, description="node 0's TCP port, with nodes > 1")
    gradient_checkpointing: Literal["auto"] | bool = Field("auto", description=(
        "keep only each layer's input for the backward pass and recompute the rest (activation checkpointing): "
        "less memory for about one more forward pass of time. auto: on when training on a CPU, off on a GPU "
        "(bench/README.md, \"Memory\"); true / false force it"))
    micro_batch_size: int | None = Field(None, ge=1, description=(
        "packed sequences per forward and backward pass; absent: the whole batch. A batch is split into such "
        "chunks and their gradients summed, so the update is the same and only activation memory and speed change "
        "(SmolLM2-135M on a CPU without checkpointing, 4 x 512 tokens: 5.6 GB at the whole batch, 3.6 GB at 1; "
        "with checkpointing 1 gains nothing)"))
    precision: Literal["fp32", "bf16"] = Field("fp32", description=(
        "what the matmuls of training run in; the weights, gradients and AdamW state stay fp32 and so does the "
        "saved student. fp32: exactly the arithmetic the held-out figures were measured with. bf16: "
        "torch.autocast to bfloat16; on a CPU with AVX512-BF16 or AMX, 1.35x the tokens/s of fp32 with "
        "checkpointing, 1.57x without (bench/README.md, \"Memory\"), for a slightly different student and +0.3 GB "
        "of bf16 weight copies; a CPU without those instructions emulates bf16, slower than fp32"))


class RoundEvalConfig(_Section):
    """The recipe's `eval:` section: evaluation of the base and distilled students on the held-out problems after
    every round (`toolkit eval`'s own flags are toolkit.eval.config.EvalConfig)."""

    max_new_tokens: int = Field(256, ge=8, description="longest answer, in tokens")
    batch_size: int = Field(16, ge=1, description="prompts decoded together")
    calculator: bool | Literal["both"] = Field(False, description=(
        "the student's arithmetic before `=` is computed and its result forced while it decodes "
        "(toolkit/data/calculator.py); not with student.sampler vllm. true: the round evals and FDD feedback "
        "decode with it. both: feedback decodes with it, and every round eval runs twice: with it (the primary "
        "figure, which the paired comparisons, feedback and deploy use) and without it (shown beside it)"))
    backend: Literal["torch", "genai", "auto"] = Field("torch", description=(
        "what the round evals and FDD feedback decode the student with. `torch`: the student folder in "
        "transformers. `genai`: each student (the base too) is exported once to onnxruntime-genai fp32 (the same "
        "weights, no quantization) into `<round>/sampler-genai-fp32/` (the base: `eval-base/`), reused by that "
        "round's eval and the next round's feedback, and decoded there. genai never pads a batch (its left-padded "
        "rows decoded differently: 6/40 replies identical to torch's at batch 20), so distinct prompts decode one "
        "at a time: on SmolLM2-135M, 40 problems, export included, all 40 replies identical to torch's at 0.8x its "
        "speed (bench/results/eval_backends.json); it pays where prompts repeat (feedback_samples > 1). `auto`: "
        "genai on a CPU machine, torch on a GPU (torch when the export fails, noted in the stage). Not genai with "
        "student.sampler vllm (vLLM is the sampler there)"))
    base: bool = Field(True, description=(
        "evaluate the base student as well (the first row of every round table). false: skip it, for a run paired "
        "with another that already scored the same base student on the same held-out problems (the equal-budget "
        "control of bench/budget_control.py: a 500-problem eval with the calculator is ~17 min on 2 cores); its "
        "rounds are then compared with round 0 and with each other only"))

    @field_validator("calculator", mode="wrap")
    @classmethod
    def _calculator_in_one_line(cls, value: Any, handler) -> bool | str:
        # The union would report one error per member (not a boolean; not 'both'): say it once.
        try:
            return handler(value)
        except ValidationError:
            raise ValueError("must be true, false or both") from None


class DeployFormat(_Section):
    """One export of the final student: its format and quantization, as `toolkit export` takes them."""

    format: Literal["onnx", "genai", "gguf"] = Field(description=(
        "onnx (optimum / onnxruntime), genai (onnxruntime-genai) or gguf (llama.cpp)"))
    # A folder name part (deploy/<format>-<quant>/); which quants a format takes is checked before the run starts.
    quant: str = Field(pattern=r"^[A-Za-z0-9_]+$", description=(
        "onnx: fp32, int8, int4; genai: int4, fp32; gguf: f16, f32, q8_0, q4_k_m, q4_0, … as llama.cpp's "
        "quantizer names them (case does not matter)"))

    @field_validator("quant")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()  # as `toolkit export` reads it: Q8_0 and q8_0 are one export

    @property
    def name(self) -> str:
        return f"{self.format}-{self.quant}"


class DeployBenchConfig(_Section):
    """The workload of each export's benchmark: `toolkit bench`'s settings (toolkit.eval.config.BenchConfig, with
    the same defaults) except `remote`, which is deploy.remote."""

    prompt_tokens: int = Field(128, description="prefill length pp, in (synthetic) tokens; at least 1")
    gen_tokens: int = Field(128, description="decode length tg, in tokens (single-token steps); at least 1")
    reps: int = Field(5, description="timed repetitions (after the warmup ones); at least 1")
    warmup: int = Field(1, description="untimed repetitions before the timed ones; at least 0")
    threads: list[int] | None = Field(None, description=(
        "CPU threads, each at least 1: N or a sweep [1, 2, 4] (the fastest decode is reported); absent: all cores"))
    allow_busy: bool = Field(False, description=(
        "report figures even when other processes use the cores (otherwise the bench refuses a busy machine)"))
    remote_python: str = Field("python3", description="python on the deploy.remote device (needs the backend runtime)")
    ssh_option: list[str] = Field(default_factory=list, description=(
        "options passed to ssh/scp as -o KEY=VALUE, e.g. [IdentityFile=~/.ssh/edge]"))
    # Accepted only to say where the device goes: `toolkit bench --remote` is deploy.remote in a recipe.
    remote: None = Field(None, exclude=True, description="not set here: the device is deploy.remote")

    @field_validator("remote", mode="before")
    @classmethod
    def _remote_elsewhere(cls, value: Any) -> None:
        raise ValueError("give the device as deploy.remote")

    @field_validator("threads", mode="before")
    @classmethod
    def _one_or_a_sweep(cls, value: Any) -> Any:
        return thread_sweep(value, "[1, 2, 4]")  # as `toolkit bench --threads` reads it

    @field_validator("prompt_tokens", "gen_tokens", "reps")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("warmup")
    @classmethod
    def _at_least_zero(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be at least 0")
        return value

    @field_validator("threads")
    @classmethod
    def _threads_at_least_one(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(t < 1 for t in value):
            raise ValueError("must be at least 1")
        return value


class DeployConfig(_Section):
    """Deployment after the last round or self-guided iteration: the final student is exported to each format,
    each export's parity is checked (as `toolkit export` does), its held-out accuracy is measured in its own
    runtime and paired with the fp32 student's on the same problems, and it is benchmarked; then one export is
    picked, packed as the edge bundle, and `report/` is written. Every step is a stage of its own, resumed like
    the others; a step whose settings here changed is redone, the rest are not."""

    formats: list[DeployFormat] = Field(min_length=1, description=(
        "the exports, each `{format, quant}` (see DeployFormat), e.g. [{format: gguf, quant: q8_0}, {format: genai, "
        "quant: int4}]; each lands in deploy/<format>-<quant>/"))
    heldout: int | None = Field(None, ge=1, description=(
        "evaluate each export on the first N held-out problems; absent: all of them, as the rounds"))
    max_accuracy_drop: float = Field(5.0, gt=0, description=(
        "points of strict accuracy (percentage points) an export may lose against the fp32 student, read at the "
        "upper end of the paired 95% interval of the drop; an export whose parity failed never qualifies"))
    pick: Literal["smallest", "fastest"] = Field("smallest", description=(
        "which qualifying export is recommended: `smallest` (fewest bytes on disk; ties: the faster) or `fastest` "
        "(most decode tokens/s in the bench; ties: the smaller)"))
    bundle: bool = Field(True, description=(
        "pack the picked export as the edge bundle (a .tar.gz with a runtime-only runner); then only gguf and "
        "genai exports are candidates, as only they have such a runner"))
    bench: DeployBenchConfig = Field(default_factory=DeployBenchConfig, description=(
        "the benchmark's workload (see DeployBenchConfig)"))
    remote: str | None = Field(None, description=(
        "`ssh://user@host[:port]`: run the benchmark on that device (reached with keys, checked before the run "
        "starts); absent: on this machine"))

    @model_validator(mode="after")
    def _distinct_and_bundleable(self) -> DeployConfig:
        names = [f.name for f in self.formats]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"formats name {', '.join(twice)} more than once")
        if self.bundle and not any(f.format in ("gguf", "genai") for f in self.formats):
            raise ValueError("bundle: true packs a gguf or genai export (only they have a runtime-only runner); "
                             "add one to formats or set bundle: false")
        return self


# Fields added to the recipe after run folders already existed, as (section, field). A run folder keeps its
# recipe's digest and a resume refuses a different one (RunDir.open), so such a field left at its default is
# dropped from the digest: runs made before it existed still resume, and setting it changes the digest.
LATE_FIELDS: tuple[tuple[str, str], ...] = (("eval", "backend"), ("train", "micro_batch_size"),
                                            ("train", "precision"), ("distill", "label_check"),
                                            ("eval", "base"), ("distill", "question_check"),
                                            ("distill", "round_source"), ("distill", "originals_per_round"),
                                            ("distill", "originals_pick"))


class Recipe(_Section):
    """One distillation run."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the run folder is `<output_dir>/<name>`")
    seed: int = Field(0, description="seeds data splits, sampling and training")
    output_dir: str = Field("runs", description="where run folders go (relative to the current directory)")
    cache_dir: str | None = Field(None, description=(
        "the teacher request cache's folder; absent: $TOOLKIT_CACHE or ~/.cache/toolkit"))
    data: DataConfig = Field(description="training and held-out problems (see DataConfig)")
    teacher: TeacherConfig = Field(description="the teacher LLM (see TeacherConfig)")
    student: StudentConfig = Field(description="the student (see StudentConfig)")
    distill: DistillConfig = Field(DistillConfig(), description="the method: rounds, paths, votes (see DistillConfig)")
    train: TrainConfig = Field(TrainConfig(), description="the student's fine-tuning (see TrainConfig)")
    eval: RoundEvalConfig = Field(RoundEvalConfig(), description="the round evals (see RoundEvalConfig)")
    # Left out of the recipe's digest and dump (the manifest records it apart, under deploy.settings): adding
    # or changing it on a finished run resumes that run, and the deploy stages redo what their settings changed.
    deploy: DeployConfig | None = Field(None, exclude=True, description=(
        "export, check, benchmark and pick the final student (see DeployConfig); absent: the run ends at the "
        "torch checkpoint"))

    @model_validator(mode="after")
    def _calculator_needs_a_local_sampler(self) -> Recipe:
        if self.eval.calculator and self.student.sampler == "vllm":
            raise ValueError("eval.calculator steers decoding token by token, which the vLLM sampler does not "
                             "allow; use student.sampler: transformers or eval.calculator: false")
        return self

    @model_validator(mode="after")
    def _genai_eval_needs_a_local_sampler(self) -> Recipe:
        if self.eval.backend == "genai" and self.student.sampler == "vllm":
            raise ValueError("eval.backend genai decodes the student in this process, but student.sampler vllm "
                             "serves it with vLLM; use one of them (eval.backend: torch or student.sampler: "
                             "transformers)")
        return self

    # Set by load_recipe: the folder relative paths in the recipe are resolved against.
    base_dir: Path = Field(default=Path("."), exclude=True)

    def resolve(self, path: str) -> Path:
        """A path from the recipe, relative to the recipe file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def digest(self) -> str:
        """sha256 of the resolved recipe (the manifest records it; a changed recipe is visible). A field of
        LATE_FIELDS counts only when set away from its default."""
        dump = self.model_dump(mode="json")
        for section, field in LATE_FIELDS:
            part = getattr(self, section)
            if part is not None and getattr(part, field) == type(part).model_fields[field].default:
                del dump[section][field]
        text = json.dumps(dump, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def extends(self, earlier: dict) -> str | None:
        """What this recipe adds to the run that `earlier` (a run manifest's recipe, untrusted) made, when it is
        that recipe with more rounds and nothing else changed: the finished rounds are this one's first rounds,
        so the run goes on from them (e.g. "distill.rounds 2 -> 4"). None for any other difference."""
        try:
            before = Recipe.model_validate(earlier)
        except (ValidationError, TypeError, ValueError):
            return None
        if before.distill.rounds >= self.distill.rounds:
            return None
        widened = before.model_copy(update={"distill": before.distill.model_copy(
            update={"rounds": self.distill.rounds})})
        if widened.digest() != self.digest():
            return None
        return f"distill.rounds {before.distill.rounds} -> {self.distill.rounds}"


def _key_lines(node: yaml.Node, prefix: tuple = (), seen: set[int] | None = None) -> dict[tuple, int]:
    """Map every key path in a composed YAML document to its 1-based line number.

    A node reached again through an alias is not walked twice: `&a [*a]` would recurse for ever and
    nested aliases ("billion laughs") would take exponential time.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:
        return {}
    seen.add(id(node))
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a list or mapping as a key is never a recipe key; validation says so
            path = prefix + (key_node.value,)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path, seen))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            lines.update(_key_lines(item, prefix + (i,), seen))
    return lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (['train', 'lr'], 0.0003); the value is read as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not key.path=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def _apply_override(data: dict, parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"override {'.'.join(parts)}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe; every problem is one RecipeError naming key and line."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
        raise RecipeError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of sections, got {type(data).__name__}")
    lines = _key_lines(node) if node is not None else {}
    overridden = set()
    for item in overrides:
        parts, value = parse_override(item)
        _apply_override(data, parts, value)
        overridden.add(tuple(parts))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_describe(exc, path, lines, overridden)) from None
    except RecursionError:
        raise RecipeError(f"{path}: a YAML alias refers to itself") from None
    recipe.base_dir = path.resolve().parent
    t = recipe.teacher
    for url in [t.base_url] + [e.base_url for e in t.endpoints or []]:
        host = _plain_http_host(url)
        if host:
            log.warning("warning: %s: the teacher at %s is reached over plain http://: the API key and every "
                        "prompt travel unencrypted; use https:// unless that network is yours", path, host)
    return recipe


def _describe(exc: ValidationError, path: Path, lines: dict[tuple, int], overridden: set) -> str:
    """One line per schema error: `recipe.yaml:12: train.epoch: unknown key`."""
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # A key with a line break or control character is quoted so the message stays one line.
        key = ".".join(str(p) if str(p).isprintable() else repr(p) for p in loc) or "(top level)"
        if loc in overridden:
            where = "command-line override"
        else:
            line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
            where = f"{path}:{line}" if line else str(path)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            # Values of URL and key-name fields are not echoed: a misplaced key would reach the terminal.
            if "input" in err and not isinstance(err["input"], dict) and loc[-1:] not in (("base_url",), ("api_key_env",)):
                msg += f" (got {err['input']!r})"
        out.append(f"{where}: {key}: {msg}")
    return "; ".join(out)

"""Code Llama - Instruct: self-instruct data filtered by unit tests (paper §2.5), and the instruct stage's data.

Self-instruct, as the paper builds it (codellama.md §3.5), ~14,000 question-tests-solution triplets:

1. interview-style questions from a large model (Llama 2 70B) with the prompt of Fig. 10, 50 per answer;
   exact duplicates removed;
2. five unit tests per question from Code Llama 7B (Fig. 11, a one-shot prompt);
3. ten solutions per question from Code Llama 7B (Fig. 12; the prompt shows the first test, so the model can infer
   the signature);
4. the tests run against every solution in the sandbox (codellama_hf/evaluation/sandbox.py); the first solution that
   passes is kept, and why the others failed (wrong answer, error, timeout, syntax error, empty) is recorded.

`codellama-hf instruct generate` runs it with any HF causal LM (batched, through codellama_hf.generation) or an
OpenAI-compatible server (vLLM, TGI: /v1/completions or /v1/chat/completions), for questions and for code
separately. Work is cached on disk as it finishes (questions.jsonl, items.jsonl), so a restarted run picks up where
the last one stopped; the result is a `datasets` dataset with the chat `messages` the instruct stage trains on,
plus summary.json and summary.png.

Prompts are the paper's figures as text (the paper prompted base Code Llama 7B with raw text); with a chat model
(`chat=True`, `--api chat`) the same turns go through the chat template instead. What the paper leaves open and
we choose: sampling (questions T=0.6/p=0.9, Meta's chat_completion defaults; tests greedy; solutions T=0.8/p=0.95,
the paper's pass@k sampling) and the answer format of a training dialog (the solution between [PYTHON] tags, the
format of Fig. 12).

The instruct stage (`run_instruct`, recipes/instruct.py) trains on those dialogs plus a rehearsal mixture (paper:
code 6%, natural language 2%), mixed in proportion to tokens, packed with labels only on the assistant's tokens.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import itertools
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from codellama_hf.chat import CHAT_TEMPLATE, IGNORE_INDEX, encode_dialogs, exchanges
from codellama_hf.io import atomic_dir, atomic_file, write_json

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# 1. Prompts (paper, Appendix H: Figs. 10-12)
# ---------------------------------------------------------------------------------------------------------------

QUESTIONS_REQUEST = (
    "Write 50 programming interview questions of easy and medium complexity. Provide questions on a diverse range "
    "of subjects, and make sure no two questions are alike. Make sure the problems can be solved with a single "
    "standalone Python function using standard libraries."
)
TESTS_REQUEST = (
    "Your task is to write 5 tests to check the correctness of a function that solves a programming problem.\n"
    "The tests must be between [TESTS] and [/TESTS] tags.\n"
    'You must write the comment "#Test case n:" on a separate line directly above each assert statement, where n '
    "represents the test case number, starting from 1 and increasing by one for each subsequent test case.\n"
)
SOLUTION_REQUEST = (
    "Your task is to write a Python function to solve a programming problem.\n"
    "The Python code must be between [PYTHON] and [/PYTHON] tags.\n"
    "You are given one example test from which you can infere the function signature.\n"  # sic, as in the paper
)
EXAMPLE_PROBLEM = "Write a Python function to get the unique elements of a list."
EXAMPLE_TEST = "assert get_unique_elements([1, 2, 3, 2, 1]) == [1, 2, 3]"
EXAMPLE_TESTS = (
    "[TESTS]\n# Test case 1:\nassert get_unique_elements([]) == []\n# Test case 2:\nassert get_unique_elements([1]) "
    f"== [1]\n# Test case 3:\n{EXAMPLE_TEST}\n[/TESTS]"
)
EXAMPLE_SOLUTION = "[PYTHON]\ndef get_unique_elements(my_list):\n    return list(set(my_list))\n[/PYTHON]"


@dataclass(frozen=True)
class Prompt:
    """One request: chat turns, and the same turns as the raw text the paper's figures show."""

    messages: tuple[dict, ...]
    text: str


def _prompt(turns: Sequence[tuple[str, str]], *, close: str) -> Prompt:
    """Figs. 11-12 end user turns with "\\n[/INST]" and put answers on their own line; Fig. 10 uses " [/INST]"."""
    messages = tuple({"role": role, "content": content} for role, content in turns)
    parts = [f"[INST] {content}{close}[/INST]" if role == "user" else content for role, content in turns]
    return Prompt(messages, "\n".join(parts))


def questions_prompt() -> Prompt:
    return _prompt([("user", QUESTIONS_REQUEST)], close=" ")


def tests_prompt(question: str) -> Prompt:
    return _prompt(
        [
            ("user", f"{TESTS_REQUEST}Problem: {EXAMPLE_PROBLEM}"),
            ("assistant", EXAMPLE_TESTS),
            ("user", f"Problem: {question}"),
        ],
        close="\n",
    )


def solution_prompt(question: str, test: str) -> Prompt:
    return _prompt(
        [
            ("user", f"{SOLUTION_REQUEST}Problem: {EXAMPLE_PROBLEM}\nTest: {EXAMPLE_TEST}"),
            ("assistant", EXAMPLE_SOLUTION),
            ("user", f"Problem: {question}\nTest: {test}"),
        ],
        close="\n",
    )


def solution_message(solution: str) -> str:
    """The assistant's answer in a training dialog: the code between the [PYTHON] tags of Fig. 12."""
    return f"[PYTHON]\n{solution}\n[/PYTHON]"


# ---------------------------------------------------------------------------------------------------------------
# 2. Reading model output
# ---------------------------------------------------------------------------------------------------------------

_NUMBERED = re.compile(r"^\s*\d{1,3}\s*[.)]\s+(\S.*)$")


def _between(text: str, start: str, end: str) -> str:
    """Text after `start` (or from the beginning) up to `end` or a new [INST] turn (or the end)."""
    i = text.find(start)
    text = text[i + len(start) :] if i >= 0 else text
    for stop in (end, "[INST]"):
        j = text.find(stop)
        text = text[:j] if j >= 0 else text
    return text


def parse_questions(text: str) -> list[str]:
    """The items of a numbered list ("1. ...", "2) ..."); an item's continuation lines are joined to it."""
    questions, current = [], None
    for line in _between(text, "", "[/INST]").splitlines():
        match = _NUMBERED.match(line)
        if match or not line.strip():
            if current:
                questions.append(" ".join(current))
            current = [match[1].strip()] if match else None
        elif current is not None:
            current.append(line.strip())
    if current:
        questions.append(" ".join(current))
    return [q for q in questions if q]


def parse_tests(text: str) -> list[str]:
    """The assert statements between [TESTS] and [/TESTS] (the closing tag may have been cut by a stop sequence)."""
    block = _between(text, "[TESTS]", "[/TESTS]")
    try:
        tree = ast.parse(block)
    except SyntaxError:  # keep the asserts that stand on their own lines
        return [line.strip() for line in block.splitlines() if line.strip().startswith("assert") and _parses(line)]
    return [ast.get_source_segment(block, node) for node in tree.body if isinstance(node, ast.Assert)]


def _parses(code: str) -> bool:
    try:
        ast.parse(code.strip())
    except SyntaxError:
        return False
    return True


def parse_solution(text: str) -> str:
    """The code between [PYTHON] and [/PYTHON], without a Markdown fence around it ("" when there is none)."""
    code = _between(text, "[PYTHON]", "[/PYTHON]").strip("\n")
    fenced = re.fullmatch(r"\s*```[\w+-]*\n(.*?)\n?```\s*", code, flags=re.DOTALL)
    return (fenced[1] if fenced else code).rstrip()


# ---------------------------------------------------------------------------------------------------------------
# 3. Generators: HF models and OpenAI-compatible servers
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


class Generator(Protocol):
    """Anything that completes prompts: `n` completions per prompt, each cut before its first stop sequence."""

    name: str

    def complete(self, prompts: Sequence[Prompt], *, n: int, sampling: Sampling, seed: int) -> list[list[str]]: ...


class HFGenerator:
    """A transformers causal LM, batched, through codellama_hf.generation (left padding, stop sequences)."""

    def __init__(self, model, tokenizer, *, name: str | None = None, batch_size: int = 8, chat: bool = False):
        if chat and not tokenizer.chat_template:
            raise ValueError(
                f"tokenizer {tokenizer.name_or_path!r} has no chat template; drop --chat-template to "
                "prompt with the paper's raw text"
            )
        self.model, self.tokenizer, self.batch_size, self.chat = model, tokenizer, batch_size, chat
        self.name = name or str(getattr(model, "name_or_path", "") or type(model).__name__)

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "auto", device: str | None = None, **kwargs) -> HFGenerator:
        from codellama_hf.generation import load_model

        model, tokenizer = load_model(path, dtype=dtype, device=device)
        return cls(model, tokenizer, name=str(path), **kwargs)

    def _text(self, prompt: Prompt) -> str:
        if not self.chat:
            return prompt.text
        text = self.tokenizer.apply_chat_template(list(prompt.messages), tokenize=False)
        bos = self.tokenizer.bos_token or ""
        return text[len(bos) :] if bos and text.startswith(bos) else text  # generate() adds the BOS itself

    def complete(self, prompts: Sequence[Prompt], *, n: int, sampling: Sampling, seed: int) -> list[list[str]]:
        from codellama_hf.generation import generate

        if not prompts:
            return []
        sample = sampling.temperature > 0
        return generate(
            self.model,
            self.tokenizer,
            [self._text(p) for p in prompts],
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sample,
            temperature=sampling.temperature if sample else 1.0,
            top_p=sampling.top_p if sample else 1.0,
            n=n,
            stop=sampling.stop,
            batch_size=self.batch_size,
            seed=seed,
        )


class EndpointError(RuntimeError):
    """The server cannot be reached or refuses the request."""


class OpenAIGenerator:
    """An OpenAI-compatible server (vLLM, TGI, ...): /v1/completions with the raw prompt text, or /v1/chat/completions
    with the turns. Requests run `concurrency` at a time (the server batches them); connection failures and 5xx/429
    answers are retried with exponential backoff, then raise EndpointError. A server that returns fewer than `n`
    choices (TGI) is asked again for the rest. OPENAI_API_KEY, when set, is sent as the bearer token.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api: str = "completions",
        concurrency: int = 8,
        request_timeout: float = 600.0,
        retries: int = 3,
        backoff: float = 2.0,
    ):
        if api not in ("completions", "chat"):
            raise ValueError(f"api={api!r}: choose 'completions' or 'chat'")
        if not re.match(r"^https?://", url):
            raise ValueError(f"--url {url!r}: give the server's base URL, e.g. http://127.0.0.1:8000/v1")
        if url.rstrip("/").endswith("completions"):
            raise ValueError(f"--url {url!r}: give the base URL (ending in /v1), not an endpoint (see --api)")
        self.base, self.api, self.concurrency = url.rstrip("/"), api, concurrency
        self.request_timeout, self.retries, self.backoff = request_timeout, retries, backoff
        self.model = model or self._served_model()
        self.name = f"{self.base} ({self.model})"

    def _post(self, path: str, payload: dict | None, *, retries: int) -> dict:
        url = f"{self.base}{path}"
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        data = None if payload is None else json.dumps(payload).encode()
        for attempt in range(retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
            try:
                with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                body = err.read().decode("utf-8", "replace")[:500]
                if err.code != 429 and err.code < 500:
                    raise EndpointError(f"{url} refused the request: HTTP {err.code} {body}") from None
                problem = f"the OpenAI-compatible endpoint {url} keeps failing: HTTP {err.code} {body}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                problem = f"cannot reach the OpenAI-compatible endpoint {url}: {getattr(err, 'reason', err)}"
            except json.JSONDecodeError as err:
                raise EndpointError(f"{url} did not answer with JSON ({err}); is it OpenAI-compatible?") from None
            if attempt < retries:
                time.sleep(self.backoff * 2**attempt)
        raise EndpointError(
            f"{problem}. Start the server (e.g. `vllm serve MODEL`) or fix --url; finished work is "
            "cached, so rerunning the same command resumes"
        )

    def _served_model(self) -> str:
        """The first model the server lists (vLLM needs the name; TGI ignores it); fails fast when unreachable."""
        models = self._post("/models", None, retries=0).get("data") or []
        if not models:
            raise EndpointError(f"{self.base}/models lists no model; pass --served-model")
        return models[0]["id"]

    def _one(self, prompt: Prompt, n: int, sampling: Sampling, seed: int) -> list[str]:
        payload = {
            "model": self.model,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stop": list(sampling.stop) or None,
            "seed": seed,
        }
        if self.api == "chat":
            path, payload["messages"] = "/chat/completions", list(prompt.messages)
        else:
            path, payload["prompt"] = "/completions", prompt.text
        texts: list[str] = []
        while len(texts) < n:
            payload["n"] = n - len(texts)
            choices = sorted(
                self._post(path, payload, retries=self.retries).get("choices") or [], key=lambda c: c.get("index", 0)
            )
            if not choices:
                raise EndpointError(f"{self.base}{path} answered without choices")
            texts += [self._text(choice) for choice in choices][: n - len(texts)]
            payload["seed"] = None if seed is None else seed + len(texts)
        return texts

    def _text(self, choice: dict) -> str:
        """A choice's text; None (an empty generation) becomes "" and is counted downstream."""
        if self.api == "chat":
            return (choice.get("message") or {}).get("content") or ""
        return choice.get("text") or ""

    def complete(self, prompts: Sequence[Prompt], *, n: int, sampling: Sampling, seed: int) -> list[list[str]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda ip: self._one(ip[1], n, sampling, seed + ip[0]), enumerate(prompts)))


# ---------------------------------------------------------------------------------------------------------------
# 4. Judging solutions in the sandbox
# ---------------------------------------------------------------------------------------------------------------

PASSED, WRONG, ERROR, TIMEOUT, SYNTAX, EMPTY = "passed", "wrong_answer", "error", "timeout", "syntax_error", "empty"
OUTCOMES = (PASSED, WRONG, ERROR, TIMEOUT, SYNTAX, EMPTY)
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)|[A-Z]\w+)(?::|$)")


def judge_program(solution: str, tests: Sequence[str]) -> str:
    return f"{solution}\n\n\n" + "\n".join(tests) + "\n"


def classify(result) -> tuple[str, str]:
    """(outcome, detail) for a sandbox Result: an AssertionError is a wrong answer, any other failure an error."""
    from codellama_hf.evaluation import sandbox

    if result.status == sandbox.PASSED:
        return PASSED, ""
    if result.status == sandbox.TIMEOUT:
        return TIMEOUT, result.detail
    last = next((line for line in reversed(result.stderr.strip().splitlines()) if _EXCEPTION_LINE.match(line)), "")
    if last.startswith("AssertionError"):
        return WRONG, last[:300]
    return ERROR, (last or result.detail)[:300]


# ---------------------------------------------------------------------------------------------------------------
# 5. The self-instruct pipeline (resumable)
# ---------------------------------------------------------------------------------------------------------------

QUESTIONS_FILE, ITEMS_FILE, SETTINGS_FILE = "questions.jsonl", "items.jsonl", "settings.json"
DATASET_DIR, SUMMARY_FILE, PLOT_FILE = "dataset", "summary.json", "summary.png"


@dataclass
class SelfInstructConfig:
    out_dir: Path
    question_requests: int = 1240  # x 50 questions per answer = the paper's 62,000 questions
    questions_file: Path | None = None  # your own questions (one per line, or JSONL with "question"): no step 1
    max_questions: int | None = None  # only the first N unique questions (trial runs)
    solutions: int = 10
    timeout: float = 5.0  # seconds per test program
    workers: int = 2  # sandbox workers
    chunk_size: int = 32  # questions generated, run and cached together
    seed: int = 0
    question_sampling: Sampling = Sampling(2048, 0.6, 0.9, ("[INST]",))
    test_sampling: Sampling = Sampling(512, 0.0, 1.0, ("[/TESTS]", "[INST]"))
    solution_sampling: Sampling = Sampling(512, 0.8, 0.95, ("[/PYTHON]", "[INST]"))

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        for name in ("question_requests", "solutions", "workers", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        if not self.timeout > 0:
            raise ValueError(f"timeout={self.timeout}: must be positive")
        if self.solutions > 1 and self.solution_sampling.temperature <= 0:
            raise ValueError(f"{self.solutions} solutions per question need sampling (temperature > 0)")
        if self.questions_file is not None and not Path(self.questions_file).is_file():
            raise FileNotFoundError(f"questions file {self.questions_file}: no such file")


def _seed(base: int, *key) -> int:
    return int.from_bytes(hashlib.blake2b(repr((base, *key)).encode(), digest_size=4).digest(), "little") >> 1


def question_id(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


class _Jsonl:
    """An append-only JSON-lines cache; a line cut short by an interrupted run is dropped (its item is redone)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        if path.exists():
            raw = path.read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]
            if len(complete) != len(raw):
                logger.warning("%s: dropping an incomplete last line (interrupted run); that item is redone", path)
                path.write_bytes(complete)
            for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{path}:{number}: not JSON ({err}); the cache was edited or damaged: fix or "
                        "delete that line (its item is then redone)"
                    ) from None

    def append(self, rows: Iterable[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows.append(row)
            f.flush()
            os.fsync(f.fileno())


def _settings(config: SelfInstructConfig, question_generator: Generator | None, code_generator: Generator) -> dict:
    """What decides the items: a restart must use the same, or finished items would mix two runs."""
    prompts = [questions_prompt().text, tests_prompt("{q}").text, solution_prompt("{q}", "{t}").text]
    questions = None
    if config.questions_file is not None:
        questions = hashlib.sha256(Path(config.questions_file).read_bytes()).hexdigest()[:16]
    return {
        "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16],
        "questions_file": questions,
        "question_generator": question_generator.name if question_generator else None,
        "code_generator": code_generator.name,
        "solutions": config.solutions,
        "timeout": config.timeout,
        "seed": config.seed,
        "question_sampling": asdict(config.question_sampling),
        "test_sampling": asdict(config.test_sampling),
        "solution_sampling": asdict(config.solution_sampling),
    }


def _check_settings(out: Path, settings: dict, overwrite: bool) -> None:
    path = out / SETTINGS_FILE
    if path.exists() and not overwrite:
        saved = json.loads(path.read_text())
        settings = json.loads(json.dumps(settings))  # as it would be read back
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed:
            detail = "; ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise ValueError(
                f"{out} holds a run with other settings ({detail}); use another --out, the same "
                "settings to resume, or --overwrite to start over"
            )
        return
    if overwrite:
        for name in (QUESTIONS_FILE, ITEMS_FILE):
            (out / name).unlink(missing_ok=True)
    write_json(path, settings)


def _read_questions_file(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        questions = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                questions.append(json.loads(line)["question"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{number}: expected a JSON object with a 'question' field") from None
        return questions
    return [line.strip() for line in lines if line.strip()]


def _generate_questions(config: SelfInstructConfig, generator: Generator, out: Path) -> list[dict]:
    """Step 1: `question_requests` answers to Fig. 10, each parsed into questions; cached per request."""
    cache = _Jsonl(out / QUESTIONS_FILE)
    done = {row["request"] for row in cache.rows}
    todo = [i for i in range(config.question_requests) if i not in done]
    with tqdm(total=config.question_requests, initial=len(done), desc="questions", unit="request") as bar:
        for start in range(0, len(todo), config.chunk_size):
            batch = todo[start : start + config.chunk_size]
            answers = generator.complete(
                [questions_prompt()] * len(batch),
                n=1,
                sampling=config.question_sampling,
                seed=_seed(config.seed, "questions", batch[0]),
            )
            rows = [
                {"request": i, "text": a[0], "questions": parse_questions(a[0])}
                for i, a in zip(batch, answers, strict=False)
            ]
            for row in rows:
                if not row["questions"]:
                    logger.info("question request %d gave no numbered questions: skipped", row["request"])
            cache.append(rows)
            bar.update(len(batch))
    return sorted(cache.rows, key=lambda row: row["request"])


def _judge_chunk(questions: list[str], generator: Generator, sandbox, config: SelfInstructConfig, ordinal: int):
    """Steps 2-4 for a chunk of questions: tests, solutions, the sandbox; one finished item per question."""
    from codellama_hf.evaluation.sandbox import Program

    test_answers = generator.complete(
        [tests_prompt(q) for q in questions],
        n=1,
        sampling=config.test_sampling,
        seed=_seed(config.seed, "tests", ordinal),
    )
    tests = [parse_tests(answer[0]) for answer in test_answers]
    tested = [i for i, t in enumerate(tests) if t]
    solution_answers = generator.complete(
        [solution_prompt(questions[i], tests[i][0]) for i in tested],
        n=config.solutions,
        sampling=config.solution_sampling,
        seed=_seed(config.seed, "solutions", ordinal),
    )
    items = [
        {
            "id": question_id(q),
            "question": q,
            "tests": t,
            "tests_text": a[0],
            "solutions": [],
            "outcomes": [],
            "kept": None,
            "skipped": None if t else "no_tests",
        }
        for q, t, a in zip(questions, tests, test_answers, strict=False)
    ]
    programs, slots = [], []
    for i, answers in zip(tested, solution_answers, strict=False):
        for j, answer in enumerate(answers):
            code = parse_solution(answer)
            items[i]["solutions"].append(code)
            items[i]["outcomes"].append(None)
            if not code.strip():
                items[i]["outcomes"][j] = {"status": EMPTY, "detail": "no code between [PYTHON] tags"}
            elif not _parses(code):
                items[i]["outcomes"][j] = {"status": SYNTAX, "detail": "the solution does not parse"}
            else:
                programs.append(Program(source=judge_program(code, tests[i]), timeout=config.timeout))
                slots.append((i, j))
    for (i, j), result in zip(slots, sandbox.run(programs), strict=False):
        status, detail = classify(result)
        items[i]["outcomes"][j] = {"status": status, "detail": detail}
    for item in items:
        item["kept"] = next((j for j, o in enumerate(item["outcomes"]) if o["status"] == PASSED), None)
        if item["skipped"]:
            logger.info("question %s: no test could be parsed from the generated tests: skipped", item["id"])
    return items


def generate_self_instruct(
    config: SelfInstructConfig,
    code_generator: Generator,
    question_generator: Generator | None = None,
    *,
    allow_code_execution: bool = False,
    overwrite: bool = False,
) -> dict:
    """Run (or resume) the self-instruct pipeline into `config.out_dir`; returns the summary (also summary.json).

    `question_generator` answers Fig. 10 (paper: Llama 2 70B); default: `code_generator` (paper: Code Llama 7B),
    which writes tests and solutions. Not needed with `config.questions_file`.
    """
    from codellama_hf.evaluation.sandbox import Sandbox, require_opt_in

    require_opt_in(allow_code_execution)  # before any generation: the run would stop at its first solution
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    question_generator = None if config.questions_file else (question_generator or code_generator)
    _check_settings(out, _settings(config, question_generator, code_generator), overwrite)

    if config.questions_file:
        requests = [{"request": 0, "text": "", "questions": _read_questions_file(Path(config.questions_file))}]
    else:
        requests = _generate_questions(config, question_generator, out)
    generated = [q.strip() for row in requests for q in row["questions"] if q.strip()]
    unique = list(dict.fromkeys(generated))  # exact duplicates removed, first occurrence kept
    selected = unique[: config.max_questions] if config.max_questions is not None else unique

    cache = _Jsonl(out / ITEMS_FILE)
    done = {row["id"] for row in cache.rows}
    todo = [q for q in selected if question_id(q) not in done]
    if todo:
        with (
            Sandbox(workers=config.workers, allow_code_execution=allow_code_execution) as sandbox,
            tqdm(
                total=len(selected), initial=len(selected) - len(todo), desc="tests+solutions", unit="question"
            ) as bar,
        ):
            for start in range(0, len(todo), config.chunk_size):
                chunk = todo[start : start + config.chunk_size]
                cache.append(_judge_chunk(chunk, code_generator, sandbox, config, selected.index(chunk[0])))
                bar.update(len(chunk))
                bar.set_postfix(kept=sum(row["kept"] is not None for row in cache.rows))
    by_id = {row["id"]: row for row in cache.rows}
    items = [by_id[question_id(q)] for q in selected]
    summary = summarize(requests, generated, unique, items, config)
    asked = question_generator.name if question_generator else str(config.questions_file)
    summary["generators"] = {"questions": asked, "code": code_generator.name}
    write_dataset(items, out / DATASET_DIR, generator=code_generator.name)
    summary["dataset"] = str(out / DATASET_DIR)
    write_json(out / SUMMARY_FILE, summary)
    plot_summary(summary, out / PLOT_FILE)
    return summary


def summarize(requests: list[dict], generated: list[str], unique: list[str], items: list[dict], config) -> dict:
    outcomes = Counter(o["status"] for item in items for o in item["outcomes"])
    first = Counter(item["kept"] for item in items if item["kept"] is not None)
    run = sum(outcomes[s] for s in (PASSED, WRONG, ERROR, TIMEOUT))
    kept = sum(first.values())
    return {
        "question_requests": len(requests) if not config.questions_file else 0,
        "question_requests_without_questions": sum(not row["questions"] for row in requests),
        "questions_generated": len(generated),
        "duplicates_removed": len(generated) - len(unique),
        "questions": len(items),
        "questions_without_tests": sum(item["skipped"] == "no_tests" for item in items),
        "tests_per_question": round(float(np.mean([len(i["tests"]) for i in items if i["tests"]] or [0])), 2),
        "questions_kept": kept,
        "questions_without_passing_solution": sum(item["kept"] is None and not item["skipped"] for item in items),
        "solutions": {status: outcomes.get(status, 0) for status in OUTCOMES},
        "solutions_run": run,
        "pass_rate": round(outcomes[PASSED] / run, 4) if run else None,
        "first_passing_solution": {str(k): first[k] for k in sorted(first)},
    }


def _features():
    import datasets

    text = datasets.Value("string")
    return datasets.Features(
        {
            "id": text,
            "question": text,
            "tests": datasets.List(text),
            "solution": text,
            "messages": datasets.List({"role": text, "content": text}),
            "solution_index": datasets.Value("int32"),
            "solutions_tried": datasets.Value("int32"),
            "outcomes": datasets.List(text),
            "generator": text,
        }
    )


def write_dataset(items: list[dict], out: Path, *, generator: str) -> Path:
    """The kept triplets as a `datasets` dataset with the training dialog in `messages`, written atomically."""
    import datasets

    from codellama_hf.corpus.embedded import save_atomic

    rows = [
        {
            "id": item["id"],
            "question": item["question"],
            "tests": item["tests"],
            "solution": item["solutions"][item["kept"]],
            "messages": [
                {"role": "user", "content": item["question"]},
                {"role": "assistant", "content": solution_message(item["solutions"][item["kept"]])},
            ],
            "solution_index": item["kept"],
            "solutions_tried": len(item["solutions"]),
            "outcomes": [o["status"] for o in item["outcomes"]],
            "generator": generator,
        }
        for item in items
        if item["kept"] is not None
    ]
    features = _features()
    columns = {name: [row[name] for row in rows] for name in features}  # from_list([]) would lose the columns
    return save_atomic(datasets.Dataset.from_dict(columns, features=features), out, overwrite=True)


def plot_summary(summary: dict, path: Path) -> None:
    """Solution outcomes and which sample passed first, as a PNG beside the dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_out, ax_first) = plt.subplots(1, 2, figsize=(10, 3.5))
    names = list(summary["solutions"])
    ax_out.bar(names, [summary["solutions"][n] for n in names])
    ax_out.set(title="solution outcomes", ylabel="solutions")
    ax_out.tick_params(axis="x", rotation=30)
    first = summary["first_passing_solution"]
    ax_first.bar([str(k) for k in first], list(first.values()))
    ax_first.set(
        title=f"first passing sample ({summary['questions_kept']} of {summary['questions']} kept)",
        xlabel="sample index",
        ylabel="questions",
    )
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# 6. CLI: codellama-hf instruct generate
# ---------------------------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "instruct",
        help="Code Llama - Instruct data: self-instruct with unit tests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="instruct_command", required=True, metavar="COMMAND")
    gen = commands.add_parser(
        "generate",
        help="questions -> tests -> solutions -> sandbox -> dataset (resumable)",
        description="Build a self-instruct dataset (paper §2.5). Rerun the same command to resume an interrupted run.",
    )
    gen.add_argument("--out", type=Path, required=True, help="work and output folder (dataset/, summary.json, caches)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="HF model folder or Hub id writing tests and solutions (paper: Code Llama 7B)")
    source.add_argument("--url", help="OpenAI-compatible server base URL instead, e.g. http://127.0.0.1:8000/v1")
    questions = gen.add_mutually_exclusive_group()
    questions.add_argument("--question-model", help="HF model for the questions (paper: Llama 2 70B; default --model)")
    questions.add_argument("--question-url", help="server for the questions (default: --url)")
    questions.add_argument(
        "--questions-file",
        type=Path,
        help="use these questions (one per line, or JSONL with 'question') instead of generating",
    )
    gen.add_argument(
        "--question-requests",
        type=int,
        default=1240,
        help="answers to the question prompt, 50 questions each (default 1240: the paper's 62,000)",
    )
    gen.add_argument("--max-questions", type=int, default=None, help="only the first N unique questions")
    gen.add_argument("--solutions", type=int, default=10, help="solutions per question (default 10)")
    gen.add_argument("--temperature", type=float, default=0.8, help="solution sampling temperature (default 0.8)")
    gen.add_argument("--top-p", type=float, default=0.95, help="solution nucleus sampling (default 0.95)")
    gen.add_argument("--max-new-tokens", type=int, default=512, help="for tests and solutions (default 512)")
    gen.add_argument("--question-max-new-tokens", type=int, default=2048)
    gen.add_argument(
        "--chat-template",
        action="store_true",
        help="chat models: send the prompts' turns through the chat template (--api chat for servers)",
    )
    gen.add_argument(
        "--api",
        choices=("completions", "chat"),
        default=None,
        help="server API (default: chat with --chat-template, else completions)",
    )
    gen.add_argument("--served-model", help="model name on the server (default: the first one it lists)")
    gen.add_argument("--question-served-model", help="model name on the question server")
    gen.add_argument("--concurrency", type=int, default=8, help="parallel requests to a server (default 8)")
    gen.add_argument("--batch-size", type=int, default=8, help="prompts per batch for HF models (default 8)")
    gen.add_argument("--dtype", default="auto", help="HF models: auto (bf16 on GPU, fp32 on CPU), bfloat16, ...")
    gen.add_argument(
        "--allow-code-execution",
        action="store_true",
        help="required: run model-written code in the sandbox (read codellama_hf/evaluation/sandbox.py)",
    )
    gen.add_argument("--workers", type=int, default=2, help="parallel sandbox workers (default 2)")
    gen.add_argument("--timeout", type=float, default=5.0, help="seconds per test run (default 5)")
    gen.add_argument("--chunk-size", type=int, default=32, help="questions per cached unit of work (default 32)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out and start over")
    gen.set_defaults(func=_cli_generate)


def _generator(model: str | None, url: str | None, served: str | None, args) -> Generator:
    if url:
        api = args.api or ("chat" if args.chat_template else "completions")
        return OpenAIGenerator(url, model=served, api=api, concurrency=args.concurrency)
    return HFGenerator.from_pretrained(model, dtype=args.dtype, batch_size=args.batch_size, chat=args.chat_template)


def _cli_generate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from codellama_hf.evaluation.sandbox import require_opt_in

    require_opt_in(args.allow_code_execution)
    defaults = SelfInstructConfig(out_dir=args.out)
    config = SelfInstructConfig(
        out_dir=args.out,
        question_requests=args.question_requests,
        questions_file=args.questions_file,
        max_questions=args.max_questions,
        solutions=args.solutions,
        timeout=args.timeout,
        workers=args.workers,
        chunk_size=args.chunk_size,
        seed=args.seed,
        question_sampling=replace(defaults.question_sampling, max_new_tokens=args.question_max_new_tokens),
        test_sampling=replace(defaults.test_sampling, max_new_tokens=args.max_new_tokens),
        solution_sampling=replace(
            defaults.solution_sampling,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
        ),
    )
    code = _generator(args.model, args.url, args.served_model, args)
    question = None
    if args.question_model or args.question_url:
        question = _generator(args.question_model, args.question_url, args.question_served_model, args)
    summary = generate_self_instruct(
        config, code, question, allow_code_execution=args.allow_code_execution, overwrite=args.overwrite
    )
    table = Table(title=f"self-instruct: {args.out}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    Console(highlight=False).print(table)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# 7. Instruct stage data: dialogs + rehearsal, mixed by tokens, packed with assistant-only labels
# ---------------------------------------------------------------------------------------------------------------

INSTRUCT = "instruct"  # the mixture component the dialogs fill: the mixture's `reserved` share
STDLIB = "stdlib"  # instruct source keyword: offline demo dialogs from the Python standard library


def stdlib_dialogs(max_dialogs: int = 2000):
    """Offline demo dialogs for the tiny preset: documented public functions of this machine's standard library,
    asked for by signature and docstring, answered with their source. Real text and code, NOT the paper's data."""
    import sysconfig

    import datasets

    rows = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
            code = ast.get_source_segment(source, node) if doc else None
            if not doc or node.name.startswith("_") or not code or len(code) > 1500:
                continue
            request = " ".join(doc.split("\n\n")[0].split())
            signature = f"{node.name}({ast.unparse(node.args)})"
            rows.append(
                [
                    {"role": "user", "content": f"Write a Python function `{signature}`: {request}"},
                    {"role": "assistant", "content": solution_message(code)},
                ]
            )
            if len(rows) == max_dialogs:
                break
        if len(rows) == max_dialogs:
            break
    return datasets.Dataset.from_dict({"text": [json.dumps(r, ensure_ascii=False) for r in rows]})


def load_dialogs(sources: Sequence[str], split: str = "train"):
    """Instruct dialogs from `datasets` with a `messages` column (our self-instruct output, JSON/JSONL/Parquet files,
    saved datasets or datasets names), or "stdlib": one `text` column of JSON dialogs, checked when tokenized."""
    import datasets

    parts = []
    for spec in [sources] if isinstance(sources, str) else sources:
        spec = str(spec)
        path = Path(spec).expanduser()
        if spec == STDLIB:
            parts.append(stdlib_dialogs())
            continue
        if path.is_dir() and any((path / m).exists() for m in ("dataset_info.json", "dataset_dict.json")):
            data = datasets.load_from_disk(str(path))
            data = data[split] if isinstance(data, datasets.DatasetDict) else data
        elif path.is_file():
            builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
            if builder is None:
                raise ValueError(f"instruct source {spec}: use a .jsonl, .json or .parquet file or a saved dataset")
            data = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            try:
                data = datasets.load_dataset(spec, split=split)
            except Exception as err:  # noqa: BLE001 - datasets raises many kinds; name the source and the reason
                raise FileNotFoundError(
                    f"instruct source {spec!r}: not a file, saved dataset or loadable datasets "
                    f"name ({type(err).__name__}: {err})"
                ) from None
        if "messages" not in data.column_names:
            raise ValueError(
                f"instruct source {spec}: needs a 'messages' column of {{role, content}} turns (columns: "
                f"{data.column_names})"
            )
        parts.append(
            data.map(
                lambda m: {"text": json.dumps(m, ensure_ascii=False, default=str)},
                input_columns="messages",
                remove_columns=data.column_names,
                desc=f"reading {spec}",
            )
        )
    if not parts:
        raise ValueError(
            "no instruct data: set mixture_sources: {instruct: [...]} (a self-instruct dataset, "
            "messages files, or 'stdlib' for the offline demo)"
        )
    return datasets.concatenate_datasets(parts)


def _label_spans(labels: Sequence[int]) -> list[int]:
    """[start, end, start, end, ...] of the runs of positions that carry a label."""
    mask = np.concatenate([[False], np.asarray(labels) != IGNORE_INDEX, [False]])
    return np.flatnonzero(mask[1:] != mask[:-1]).tolist()


def _encode_instruct(texts: list[str], tokenizer, seq_len: int, skipped: Counter | None) -> list[tuple[list, list]]:
    """JSON dialogs -> (ids, label spans). Invalid dialogs, dialogs without an answer and dialogs longer than seq_len
    are skipped; they are counted in `skipped` unless it is None, and the first invalid one is logged."""
    counts, first_error, dialogs = Counter(), None, []
    for text in texts:
        try:
            dialog = json.loads(text)
            turns = exchanges(dialog)
        except ValueError as err:
            counts["invalid dialog"] += 1
            first_error = first_error or err
            continue
        if turns[-1][1] is None:
            if len(turns) == 1:
                counts["no assistant answer"] += 1
                continue
            dialog = dialog[:-1]  # a trailing question has nothing to learn from
        dialogs.append(dialog)
    examples = []
    for ids, labels in encode_dialogs(tokenizer, dialogs):
        if len(ids) > seq_len:
            counts[f"dialog longer than seq_len {seq_len}"] += 1
        else:
            examples.append((ids, _label_spans(labels)))
    if skipped is not None:
        if first_error and not skipped["invalid dialog"]:
            logger.warning("skipping invalid instruct dialogs (first: %s)", first_error)
        skipped.update(counts)
    return examples


def _encode_documents(texts: list[str], tokenizer, seq_len: int, skipped: Counter | None) -> list[tuple[list, list]]:
    """Rehearsal documents as in the other stages (`<s> text </s>`, cut into seq_len chunks), loss on every token."""
    from codellama_hf.fim import tokenize_documents
    from codellama_hf.packing import chunk

    done = tokenize_documents(texts, None, tokenizer, seq_len=seq_len, fim=None)
    if skipped is not None:
        skipped.update({f"document {reason}": count for reason, count in done.skipped.items()})
    return [(list(piece), [0, len(piece)]) for piece in chunk(done.input_ids, seq_len)]


class _Component:
    """Tokenized examples of one mixture component, reshuffled and repeated whenever it runs out.

    `encode(texts, tokenizer, seq_len, skipped)` turns a batch of texts into examples; what it skips is counted
    in `self.skipped` during the first pass over the component only (later passes skip the same rows again).
    """

    def __init__(self, name: str, dataset, encode, tokenizer, seq_len: int, seed: int, batch_size: int):
        self.name, self.dataset, self.encode, self.seed, self.batch_size = name, dataset, encode, seed, batch_size
        self.tokenizer, self.seq_len = tokenizer, seq_len
        self.tokens = self.examples = self.epochs = 0
        self.skipped: Counter = Counter()

    def __iter__(self) -> Iterator[tuple[list, list]]:
        while True:
            before = self.examples
            skipped = self.skipped if self.epochs == 0 else None
            for batch in self.dataset.shuffle(seed=self.seed + self.epochs).iter(batch_size=self.batch_size):
                for example in self.encode(batch["text"], self.tokenizer, self.seq_len, skipped):
                    self.examples += 1
                    self.tokens += len(example[0])
                    yield example
            self.epochs += 1
            if self.examples == before:
                raise ValueError(f"mixture component {self.name!r} gives no training examples (skips are logged)")


def mix_by_tokens(components: dict[str, _Component], weights: dict[str, float]) -> Iterator[tuple[list, list]]:
    """Interleave components so that each one's share of the tokens tracks its weight: always draw from the one
    furthest below its share. Deterministic, so every process and every resume sees the same stream."""
    streams = {name: iter(component) for name, component in components.items()}
    while True:
        name = min(streams, key=lambda n: (components[n].tokens / weights[n], -weights[n]))
        yield next(streams[name])


def pack_examples(examples: Sequence[tuple[list, list]], seq_len: int, pad_id: int) -> list[dict]:
    """Best-fit packing of (ids, label spans) examples into rows of seq_len tokens, spans moved with them."""
    from codellama_hf.packing import best_fit_decreasing

    rows = []
    for members in best_fit_decreasing([len(ids) for ids, _ in examples], seq_len):
        members.sort()  # example order inside a row
        ids = np.full(seq_len, pad_id, dtype=np.int32)
        spans, lengths, used = [], [], 0
        for i in members:
            example, example_spans = examples[i]
            ids[used : used + len(example)] = example
            spans += [used + s for s in example_spans]
            lengths.append(len(example))
            used += len(example)
        rows.append({"input_ids": ids, "label_spans": spans, "seq_lengths": lengths})
    return rows


class SFTCollator:
    """Packed rows -> input_ids / labels / position_ids (no attention_mask: position_ids restart per example).

    Labels copy the input only inside each row's label spans (a dialog's answers and their </s>; a rehearsal
    document whole) and are -100 at every example start and on padding, so nothing is predicted across examples.
    """

    def __call__(self, rows: Sequence[dict]) -> dict:
        import torch

        input_ids = torch.tensor(np.stack([np.asarray(r["input_ids"]) for r in rows]), dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        position_ids = torch.empty_like(input_ids)
        for b, row in enumerate(rows):
            spans = row["label_spans"]
            for start, end in zip(spans[0::2], spans[1::2], strict=False):  # (start, end) pairs
                labels[b, start:end] = input_ids[b, start:end]
            starts = np.cumsum([0, *row["seq_lengths"]])
            for start, end in itertools.pairwise(starts):
                position_ids[b, start:end] = torch.arange(end - start)
                labels[b, start] = IGNORE_INDEX
            position_ids[b, starts[-1] :] = torch.arange(input_ids.shape[1] - starts[-1])  # padding: its own segment
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def _sft_rows(components: dict, weights: dict, seq_len: int, pad_id: int, buffer: int, rows: int, seed: int):
    """`rows` packed rows from the token-proportional mixture, packing `buffer` examples at a time."""
    stream = mix_by_tokens(components, weights)
    rng = np.random.default_rng(seed)
    made = 0
    while made < rows:
        packed = pack_examples([next(stream) for _ in range(buffer)], seq_len, pad_id)
        for index in rng.permutation(len(packed)):  # best-fit emits long examples first: do not favour them
            yield packed[index]
            made += 1
            if made == rows:
                return


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def instruct_mixture(data_args):
    """(name, rehearsal components, token weights, component sources, instruct sources) from the data arguments,
    checked; cheap, so the stage calls it before loading a model."""
    from codellama_hf.corpus import get_mixture

    if data_args.fim_rate:
        raise ValueError(f"fim_rate={data_args.fim_rate}: the instruct stage trains on dialogs without FIM; set 0")
    if data_args.dataset_mixture is None:  # dialogs only, no rehearsal
        name, rehearsal, weights, sources = "none (dialogs only)", (), {INSTRUCT: 1.0}, {}
        instruct_sources = data_args.dataset_sources
    else:
        mixture = get_mixture(data_args.dataset_mixture)
        name, rehearsal, weights = mixture.name, mixture.components, {INSTRUCT: mixture.reserved, **mixture.weights}
        sources = dict(data_args.mixture_sources_dict() or {})
        instruct_sources = sources.pop(INSTRUCT, None)
        if not instruct_sources:
            raise ValueError(
                "mixture_sources has no 'instruct' entry: name the instruct dialogs (a self-instruct "
                "dataset folder, messages files, datasets names, or 'stdlib' for the offline "
                "demo)"
            )
        if not mixture.reserved:
            raise ValueError(
                f"mixture {name!r} reserves no share for the instruct dialogs; give it `reserved` "
                "(instruct_rehearsal reserves 0.92)"
            )
        unknown = set(sources) - set(mixture.weights)
        if unknown:
            raise ValueError(
                f"mixture_sources names {sorted(unknown)}, which mixture {name!r} lacks "
                f"(components: {sorted(mixture.weights)} and {INSTRUCT!r})"
            )
    return name, rehearsal, weights, sources, instruct_sources


def build_instruct_dataset(data_args, config, tokenizer):
    """Packed SFT rows for the instruct stage and a description of them for the lineage.

    `dataset_mixture` (preset "instruct_rehearsal": code 6%, natural language 2%, 92% reserved) gives the rehearsal
    components and weights; `mixture_sources.instruct` names the dialogs that fill the reserved share, and other
    keys override component sources as in the other stages. Weights are shares of the training tokens. Without a
    mixture (`dataset_mixture: none`), `dataset_sources` name the dialogs and nothing is rehearsed.
    Map-style data is packed once by the main process into exactly max_steps x sequences_per_step rows under
    output_dir/packed/, which every process and every resume reads; with `streaming` rows are packed on the fly
    (deterministically, so a resume replays the same stream).
    """
    import shutil

    import datasets

    from codellama_hf.corpus import Mixture, load_mixture
    from codellama_hf.training import PACKED_DIR

    name, rehearsal, weights, sources, instruct_sources = instruct_mixture(data_args)
    seed = config.data_seed if config.data_seed is not None else config.seed
    with config.main_process_first(desc="reading the instruct data and the rehearsal corpus"):
        parts = {INSTRUCT: load_dialogs(instruct_sources, data_args.dataset_split)}
        for component in rehearsal:
            parts[component.name] = load_mixture(
                Mixture(component.name, (replace(component, weight=1.0),)),
                data_args.dataset_split,
                seed=seed,
                streaming=data_args.streaming,
                sources={component.name: sources[component.name]} if component.name in sources else None,
            )
    rows = config.plan.max_steps * config.plan.sequences_per_step
    info = {
        "mixture": name,
        "mixture_weights": weights,
        "weights_are": "token shares",
        "instruct_sources": instruct_sources,
        "mixture_sources": sources,
        "split": data_args.dataset_split,
        "streaming": data_args.streaming,
        "seq_len": config.seq_len,
        "rows": rows,
        "fim": None,
    }
    # Documents are long: encode a few at a time (a batch is encoded whole, however little of it gets used).
    encoders = {name: (_encode_instruct, 256) if name == INSTRUCT else (_encode_documents, 8) for name in parts}
    components = {
        name: _Component(name, part, encoders[name][0], tokenizer, config.seq_len, seed, encoders[name][1])
        for name, part in parts.items()
    }
    gen_kwargs = {
        "components": components,
        "weights": weights,
        "seq_len": config.seq_len,
        "pad_id": tokenizer.eos_token_id,
        "buffer": data_args.packing_buffer,
        "rows": rows,
        "seed": seed,
    }
    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "label_spans": datasets.List(datasets.Value("int32")),
            "seq_lengths": datasets.List(datasets.Value("int32")),
        }
    )
    if data_args.streaming:
        return datasets.IterableDataset.from_generator(_sft_rows, gen_kwargs=gen_kwargs, features=features), info

    # Keyed by the settings, as in training.build_train_dataset: the packed rows are the run's frozen data.
    key = _digest(
        {
            "data": asdict(data_args),
            "tokenizer": tokenizer.backend_tokenizer.to_str(),
            "seq_len": config.seq_len,
            "rows": rows,
            "seed": seed,
        }
    )
    folder = Path(config.output_dir) / PACKED_DIR / key
    with config.main_process_first(desc="packing the instruct data"):
        if not (folder / "rows.json").is_file():
            with atomic_dir(folder, overwrite=True) as tmp:
                packed = datasets.Dataset.from_generator(
                    _sft_rows, features=features, gen_kwargs=gen_kwargs, cache_dir=str(tmp / "cache"), fingerprint=key
                )
                packed.save_to_disk(str(tmp / "rows"))
                label_tokens = sum(
                    (e - s) for spans in packed["label_spans"] for s, e in zip(spans[0::2], spans[1::2], strict=False)
                )
                total = sum(c.tokens for c in components.values()) or 1
                realised = {
                    "components": {
                        n: {
                            "examples": c.examples,
                            "tokens": c.tokens,
                            "epochs": c.epochs,
                            "token_share": round(c.tokens / total, 4),
                        }
                        for n, c in components.items()
                    },
                    "skipped": {n: dict(c.skipped) for n, c in components.items() if c.skipped},
                    "label_tokens": label_tokens,
                }
                (tmp / "rows.json").write_text(json.dumps(realised, indent=2) + "\n")
                del packed
                shutil.rmtree(tmp / "cache")
                if realised["skipped"]:
                    logger.info("instruct data: skipped %s", realised["skipped"])
    packed = datasets.load_from_disk(str(folder / "rows"))
    info.update(json.loads((folder / "rows.json").read_text()), packed_dir=str(folder))
    return packed, info


# ---------------------------------------------------------------------------------------------------------------
# 8. The instruct stage
# ---------------------------------------------------------------------------------------------------------------


def _build_and_describe(data_args, config, tokenizer):
    """The instruct rows, with the realised token shares printed for the person at the terminal."""
    from accelerate import PartialState
    from rich.console import Console

    rows, info = build_instruct_dataset(data_args, config, tokenizer)
    if "components" in info and PartialState().is_main_process:
        shares = ", ".join(f"{n} {c['token_share']:.1%}" for n, c in info["components"].items())
        Console(highlight=False).print(
            f"data: {info['rows']:,} rows; token shares {shares}; skipped {info['skipped'] or 'nothing'}"
        )
    return rows, info


INSTRUCT_HOOKS = dict(
    build_data=_build_and_describe, collator=SFTCollator(), chat_template=CHAT_TEMPLATE, check_data=instruct_mixture
)


def run_instruct(*, default_config: str | os.PathLike, argv: list[str] | None = None) -> Path | None:
    """Fine-tune on dialogs + rehearsal and save the model with the chat template in its tokenizer: the shared
    stage machinery (training.run_stage) with the instruct data, its collator and the chat template."""
    from codellama_hf.training import run_stage

    return run_stage(INSTRUCT, default_config=default_config, argv=argv, **INSTRUCT_HOOKS)


def main(*, default_config: str | os.PathLike) -> None:
    """Entry point of recipes/instruct.py: bad input ends in one line that names the problem (exit 2)."""
    from codellama_hf.training import main as stage_main

    stage_main(INSTRUCT, default_config=default_config, **INSTRUCT_HOOKS)

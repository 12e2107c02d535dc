"""Prompt handling as a recorded protocol choice: which form of the prompt the model sees, and in what style.

Form. bigcode-evaluation-harness' default `humaneval` task strips the prompt (`doc["prompt"].strip()`); its
`humaneval-unstripped` task keeps the trailing newline; MultiPL-E is stripped too (the harness'
bigcode_eval/tasks/multiple.py). Which one is right depends on the tokenizer: a prompt must end where the tokenizer
would end a token anyway, or the model continues from a token split it never saw in training. Llama 2's
SentencePiece encodes a docstring's closing quotes, newline and `    return` as `9995 13 | 1678 736`, so both forms
are natural boundaries for Code Llama; a byte-level BPE tokenizer merges the newline with the next line's
indentation (`\\n` + `    ` -> one `ĊĠĠĠ` token), so an unstripped HumanEval prompt is never a natural boundary
there and the model reads the lone newline as the end of the function.

`--prompt-form auto` (the default) takes the benchmark's preferred form (bigcode's default first) if every prompt
ends on a token boundary of this tokenizer, else the other form; an explicit form that does not is used but warned
about. The check: encode(prompt) must be a prefix of encode(prompt + continuation), the continuation being the
problem's reference solution (or an indented line when it has none).

Style. "completion" sends the code prompt as is. "chat" (instruct models) wraps it in the model's chat template,
one user turn asking to complete the code, and starts the answer with a code fence and the prompt itself, so the
completion still continues the prompt and is tested the same way; Code Llama - Instruct's `[INST]` format is
encoded with Meta's exact ids (codellama_hf/chat.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from codellama_hf.evaluation.benchmarks import Benchmark, Problem

log = logging.getLogger(__name__)

STRIP, UNSTRIPPED, AUTO = "strip", "unstripped", "auto"
FORMS = (STRIP, UNSTRIPPED)
COMPLETION, CHAT = "completion", "chat"
STYLES = (COMPLETION, CHAT)
FALLBACK_CONTINUATION = "    return 0\n"  # an indented line: what follows a signature in every MultiPL-E language
CHECKED_PROBLEMS = 500  # the check is a prefix test per problem; infilling has thousands of near-identical ones
CHAT_REQUEST = "Complete the following {language} code. Answer with the whole code in one code block.\n\n{prompt}"
# Code Llama - Instruct's Python answers sit between [PYTHON] tags (paper Fig. 12, the self-instruct dialogs the
# instruct stage trains on; Fig. 13 prompts the Instruct models for them the same way)
TAGGED_REQUEST = (
    "Complete the following Python code. Your code should start with a [PYTHON] tag and end with a [/PYTHON] tag."
    "\n\n{prompt}"
)
FENCE_LANGUAGE = {"python": "python", "py": "python", "cpp": "cpp", "java": "java", "cs": "csharp"}


def apply_form(problem: Problem, form: str) -> Problem:
    """`problem` with its prompt in `form`; the reference keeps prompt + reference equal to the original program."""
    if form == UNSTRIPPED:
        return problem
    if form != STRIP:
        raise ValueError(f"unknown prompt form {form!r}; choose one of {', '.join(FORMS)}")
    original = problem.prompt.lstrip()
    stripped = original.rstrip()
    tail = original[len(stripped) :]
    reference = None if problem.reference is None else tail + problem.reference
    return replace(problem, prompt=stripped, reference=reference)


def ends_on_boundary(tokenizer, prompt: str, continuation: str) -> bool:
    """True when the prompt's ids are a prefix of the ids of prompt + continuation (a natural token boundary)."""
    head = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full = tokenizer(prompt + continuation, add_special_tokens=True)["input_ids"]
    return full[: len(head)] == head


def _continuation(original: Problem, form: str) -> str:
    """What follows the prompt in `form`: the whitespace the form removed, then the reference (or an indented line)."""
    removed = original.prompt[len(original.prompt.rstrip()) :] if form == STRIP else ""
    return removed + (original.reference if original.reference is not None else FALLBACK_CONTINUATION)


def boundary_counts(tokenizer, problems: Sequence[Problem], forms: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per form: (prompts ending on a token boundary, prompts checked)."""
    checked = list(problems[:CHECKED_PROBLEMS])
    counts = {}
    for form in forms:
        good = sum(ends_on_boundary(tokenizer, apply_form(p, form).prompt, _continuation(p, form)) for p in checked)
        counts[form] = (good, len(checked))
    return counts


@dataclass(frozen=True)
class PromptProtocol:
    """What results, reports and model cards record about the prompts."""

    form: str
    requested: str
    style: str
    preferred: str  # the benchmark's own default form (bigcode's)
    boundary: dict  # form -> "k/n prompts end on a token boundary"

    def describe(self) -> dict:
        return {
            "form": self.form,
            "requested": self.requested,
            "style": self.style,
            "benchmark_default": self.preferred,
            "token_boundary": self.boundary,
        }


def choose_form(
    benchmark: Benchmark, tokenizer, problems: Sequence[Problem], requested: str = AUTO, style: str = COMPLETION
) -> PromptProtocol:
    """Resolve `requested` (auto | strip | unstripped) for this benchmark and tokenizer; warn on a bad boundary."""
    forms = benchmark.prompt_forms
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(STYLES)}")
    if requested != AUTO and requested not in forms:
        raise ValueError(
            f"prompt form {requested!r} does not apply to {benchmark.name} (its forms: {', '.join(forms)})"
        )
    counts = boundary_counts(tokenizer, problems, forms)
    if requested == AUTO:
        complete = [f for f in forms if counts[f][0] == counts[f][1]]
        form = complete[0] if complete else max(forms, key=lambda f: counts[f][0])
    else:
        form = requested
    good, total = counts[form]
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if good < total:
        others = [f"{f}: {counts[f][0]}/{counts[f][1]}" for f in forms if f != form]
        log.warning(
            "%s: %d of %d %s prompts do not end on a token boundary of tokenizer %s, so the model continues from a "
            "token split it never saw in training (scores can collapse). Other forms: %s",
            benchmark.name,
            total - good,
            total,
            form,
            name,
            ", ".join(others) or "none",
        )
    return PromptProtocol(
        form=form,
        requested=requested,
        style=style,
        preferred=forms[0],
        boundary={f: f"{counts[f][0]}/{counts[f][1]}" for f in forms},
    )


def _chat_format(tokenizer, language: str) -> tuple[str, str, str]:
    """(request, answer opening, answer closing): [PYTHON] tags for Code Llama - Instruct's template in Python, a
    Markdown fence otherwise. The request is formatted with the problem's prompt."""
    from codellama_hf.chat import CHAT_TEMPLATE

    fence = FENCE_LANGUAGE.get(language, language)
    if tokenizer.chat_template == CHAT_TEMPLATE and fence == "python":
        return TAGGED_REQUEST, "[PYTHON]\n", "[/PYTHON]"
    return CHAT_REQUEST.format(language=fence, prompt="{prompt}"), f"```{fence}\n", "\n```"


def chat_prompt(tokenizer, problem: Problem, language: str) -> list[int]:
    """Prompt ids for an instruct model: one user turn, and the answer opened (a fence or Code Llama - Instruct's
    [PYTHON] tag) and continued with the code prompt."""
    from codellama_hf.chat import CHAT_TEMPLATE, chat_prompt_ids
    from codellama_hf.tokenizer import BYTE_LEVEL, encode, tokenizer_kind

    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"tokenizer {name!r} has no chat template: use --prompt-style completion for a base model")
    request, opening, _ = _chat_format(tokenizer, language)
    messages = [{"role": "user", "content": request.format(prompt=problem.prompt)}]
    answer = opening + problem.prompt
    if tokenizer.chat_template == CHAT_TEMPLATE:
        # Code Llama - Instruct: the answer follows "[/INST] ", as the instruct stage trained it (chat.encode_dialogs).
        # SentencePiece's implicit "▁" is that space; a byte-level BPE base (SmolLM2 with this template) needs it
        # written, or the model sees "[/INST][PYTHON]" where it learned "[/INST] [PYTHON]".
        if tokenizer_kind(tokenizer) == BYTE_LEVEL:
            return (
                chat_prompt_ids(tokenizer, messages) + tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
            )
        return chat_prompt_ids(tokenizer, messages) + encode(tokenizer, answer)
    return chat_prompt_ids(tokenizer, messages) + tokenizer(answer, add_special_tokens=False)["input_ids"]


def chat_stop(stop: Sequence[str], tokenizer, language: str) -> tuple[str, ...]:
    """A chat answer also ends where its code block closes (the fence, or [/PYTHON])."""
    return tuple(dict.fromkeys([*stop, _chat_format(tokenizer, language)[2]]))

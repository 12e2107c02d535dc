"""Long-context evaluations (Code Llama paper §3.3, App. G): synthetic key retrieval and perplexity vs length.

Key retrieval: a function returning a two-digit number is hidden at a relative depth (0, 0.2, 0.4) in filler code
of a given total length in tokens, and the prompt ends with `assert my_function() == `; an example is correct when
the greedy continuation starts with that number. The paper's filler is CodeContests solutions, which no registry
ships: ours is the Python standard library's source (whole files, so the prompt stays syntactically valid Python),
a stated deviation. The haystack is made of whole top-level statements and the key is inserted between two
of them, so the prompt parses as Python.

Perplexity vs context length (the paper gives no windowing; ours): every file with at least max(lengths) + 1
tokens is cut to the same token budget, so every length scores exactly the same tokens. For length L a window of
L tokens slides by S = L/2; the first window scores all its tokens, each later one only its last S, so every token
is scored once with at least L/2 tokens of context past the first window. PPL(L) = exp(total NLL / tokens). Logits
are computed in chunks, so long windows fit in memory.
"""

from __future__ import annotations

import ast
import itertools
import math
import random
import re
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from codellama_hf.generation import generate

KEY_FUNCTION = (
    'def my_function() -> int:\n    """Note that this function is used at the end\n    """\n    return {value}\n'
)
QUERY = "assert my_function() == "
DEPTHS = (0.0, 0.2, 0.4)


def stdlib_python_files(min_bytes: int = 0) -> list[Path]:
    """The standard library's top-level .py files (sorted), optionally only the large ones."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(stdlib.glob("*.py")) if p.stat().st_size >= min_bytes]


def _statements(path: Path) -> list[str]:
    """A file's source split into top-level statements (decorators and leading comments kept with them)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    lines = text.splitlines(keepends=True)
    starts = [min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1 for node in tree.body]
    bounds = [0, *starts[1:], len(lines)]
    chunks = ["".join(lines[a:b]) for a, b in itertools.pairwise(bounds)]
    # `from __future__` must open a file; elsewhere in the haystack it would be a syntax error.
    return [c if c.endswith("\n") else c + "\n" for c in chunks if c and not c.lstrip().startswith("from __future__")]


def _pack_filler(tokenizer, start: int, budget: int) -> list[str]:
    """Top-level statements of standard-library files (from file `start` on) filling about `budget` tokens.

    Statements longer than a tenth of the budget are skipped, so the key can sit close to any depth, and so is
    any statement that would overflow the budget."""
    files = stdlib_python_files()
    largest = max(32, budget // 10)
    chunks, used = [], 0
    for i in range(start, start + len(files)):
        statements = _statements(files[i % len(files)])
        if not statements:
            continue
        for chunk, ids in zip(statements, tokenizer(statements, add_special_tokens=False)["input_ids"], strict=False):
            if len(ids) <= largest and used + len(ids) <= budget:
                chunks.append(chunk)
                used += len(ids)
        if used >= budget - 8:
            break
    return chunks


def _prompt(chunks: list[str], depth: float, key: str) -> str:
    """The statements with the key function inserted at the statement boundary closest to relative `depth`."""
    bounds = list(itertools.accumulate(map(len, chunks), initial=0))
    cut = min(range(len(bounds)), key=lambda i: abs(bounds[i] - depth * bounds[-1]))
    return "".join(chunks[:cut]) + key + "\n" + "".join(chunks[cut:]) + QUERY


def key_retrieval_prompts(
    tokenizer, lengths: Sequence[int], depths: Sequence[float] = DEPTHS, *, examples: int = 4, seed: int = 0
) -> list[dict]:
    """Prompts of at most `length` tokens each (BOS included; the real count is `tokens`), key at `depth`."""
    fixed = len(tokenizer(KEY_FUNCTION.format(value=10) + "\n" + QUERY, add_special_tokens=True)["input_ids"])
    prompts = []
    for length in lengths:
        if length <= fixed + 16:
            raise ValueError(f"key retrieval length {length} is too short: the key and query alone take {fixed}")
        for depth in depths:
            if not 0.0 <= depth <= 1.0:
                raise ValueError(f"key retrieval depth must be in [0, 1], got {depth}")
            for example in range(examples):
                rng = random.Random(f"{seed}-{length}-{depth}-{example}")
                value = rng.randint(10, 99)
                chunks = _pack_filler(tokenizer, rng.randrange(1000), length - fixed)
                key = KEY_FUNCTION.format(value=value)
                while True:
                    text = _prompt(chunks, depth, key)
                    tokens = len(tokenizer(text, add_special_tokens=True)["input_ids"])
                    if tokens <= length or not chunks:
                        break
                    chunks.pop()
                prompts.append(
                    dict(length=length, depth=depth, example=example, value=value, tokens=tokens, prompt=text)
                )
    return prompts


def answer_value(completion: str) -> int | None:
    match = re.match(r"\s*(\d+)", completion)
    return int(match.group(1)) if match else None


def key_retrieval(
    model,
    tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float] = DEPTHS,
    *,
    examples: int = 4,
    seed: int = 0,
    batch_size: int = 1,
) -> dict:
    """Accuracy per (length, depth) and overall, with every example's answer."""
    prompts = key_retrieval_prompts(tokenizer, lengths, depths, examples=examples, seed=seed)
    outputs = generate(
        model,
        tokenizer,
        [p["prompt"] for p in prompts],
        max_new_tokens=6,
        stop=("\n",),
        batch_size=batch_size,
        progress="key retrieval",
    )
    records = []
    for p, (completion,) in zip(prompts, outputs, strict=False):
        records.append(
            {k: p[k] for k in ("length", "depth", "example", "value", "tokens")}
            | {"completion": completion, "correct": answer_value(completion) == p["value"]}
        )
    grid = {}
    for length in lengths:
        for depth in depths:
            cell = [r["correct"] for r in records if r["length"] == length and r["depth"] == depth]
            grid[f"{length}@{depth:g}"] = sum(cell) / len(cell)
    return {
        "accuracy": sum(r["correct"] for r in records) / len(records),
        "by_length_depth": grid,
        "lengths": list(lengths),
        "depths": list(depths),
        "examples": examples,
        "records": records,
    }


def window_nll(model, window: torch.Tensor, scored: int, chunk: int) -> float:
    """Summed NLL of the last `scored` tokens of `window` (1 x L), computing logits `chunk` positions at a time.

    The one teacher-forced scorer of the evaluations: perplexity by length here, the middle loss of infilling
    tasks (crossfile.middle_loss). Only the scored positions go through the output head, so a long window never
    holds its full logits."""
    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=window, use_cache=False).last_hidden_state[0]
        head = model.get_output_embeddings()
        targets = window[0, -scored:]
        states = hidden[-scored - 1 : -1]
        total = 0.0
        for i in range(0, scored, chunk):
            logits = head(states[i : i + chunk]).float()
            total += torch.nn.functional.cross_entropy(logits, targets[i : i + chunk], reduction="sum").item()
    return total


def perplexity_by_length(
    model,
    tokenizer,
    texts: Sequence[str],
    lengths: Sequence[int],
    *,
    max_tokens_per_text: int | None = None,
    chunk: int = 1024,
) -> dict:
    """PPL(L) for each context length L over the same scored tokens (see the module docstring)."""
    lengths = sorted(set(lengths))
    if not lengths or lengths[0] < 2:
        raise ValueError(f"context lengths must be >= 2, got {lengths}")
    need = lengths[-1] + 1
    streams = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) >= need:
            streams.append(ids[: max(need, max_tokens_per_text or 0)] if max_tokens_per_text else ids)
    if not streams:
        raise ValueError(
            f"no text has the {need} tokens that context length {lengths[-1]} needs; "
            "add longer files or use shorter lengths"
        )
    device = model.device
    result = {}
    for length in lengths:
        stride = max(1, length // 2)
        nll, count = 0.0, 0
        for ids in tqdm(streams, desc=f"perplexity @ {length}", leave=False):
            tokens = torch.tensor([ids], device=device)
            end = min(length, len(ids))
            nll += window_nll(model, tokens[:, :end], end - 1, chunk)
            count += end - 1
            while end < len(ids):
                new_end = min(end + stride, len(ids))
                window = tokens[:, max(0, new_end - length) : new_end]
                nll += window_nll(model, window, new_end - end, chunk)
                count += new_end - end
                end = new_end
        result[length] = math.exp(nll / count)
    return {
        "perplexity": {str(k): v for k, v in result.items()},
        "lengths": lengths,
        "files": len(streams),
        "scored_tokens": count,
    }

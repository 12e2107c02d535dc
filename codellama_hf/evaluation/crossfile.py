"""Cross-file infilling: does the model use the rest of the repository to fill a line?

Tasks come from held-out repositories (folders of real Python files; by default packages of the Python standard
library, each package one repository). A task's middle is one whole single-line statement of file F that uses a name
X defined at the top level of another file G of the same repository which F imports, where X occurs nowhere else in
F (word-boundary match over the whole file minus that line): without G the model cannot know X. Typically
`module.X(...)` after `import module` or `from . import module`.

Each task is prompted twice, in Code Llama's infilling format (PSM by default), and the two prompts differ only by
the repository context in front of the prefix (repository.py's plain-text headers; no new tokens):

    without:  <PRE> # file: F \\n <prefix window of F>            <SUF> <suffix window> <MID>
    with:     <PRE> # file: G \\n <G> ... # file: F \\n <prefix>   <SUF> <suffix window> <MID>

The context holds G first, then the other files F imports while `context_tokens` allows, laid out in dependency
order. Metrics per variant: exact match (the first generated line equals the middle line, whitespace-stripped,
greedy) and middle loss (mean NLL per token of the middle and ▁<EOT> under teacher forcing); their differences
measure how much the model uses the other file. Inspired by CrossCodeEval (Ding et al., 2023) and RepoBench
(Liu et al., 2023), built from local sources so it runs offline.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import logging
import random
import re
import sysconfig
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from codellama_hf.evaluation.long_context import window_nll
from codellama_hf.repository import (
    Repository,
    defined_names,
    dependencies,
    dependency_order,
    header,
    package_name,
    read_repository,
    render_file,
)

logger = logging.getLogger(__name__)

TASK = "cross-file"
DEFAULT_PACKAGES = ("email", "json", "http", "logging", "concurrent", "importlib", "xml", "unittest", "asyncio")
_COMMON = set(dir(builtins)) | set(keyword.kwlist) | {"self", "cls"}


@dataclass(frozen=True)
class CrossFileTask:
    task_id: str  # <repository>/<file>:<line>
    repository: str
    path: str  # the file the middle line is in
    line: int  # 1-based
    name: str  # the name only another file defines
    defined_in: str  # that file
    prefix: str  # header(path) + the prefix window
    middle: str  # the whole line, newline included
    suffix: str
    context: str  # rendered other files, to put in front of the prefix
    context_files: tuple[str, ...]

    def prompt(self, with_context: bool) -> tuple[str, str]:
        """(prefix, suffix) of the variant; the two variants differ only by the context before the prefix."""
        return (self.context + self.prefix if with_context else self.prefix), self.suffix


def default_repositories() -> list[Path]:
    """Standard-library packages used as held-out repositories (those that exist in this Python)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [stdlib / name for name in DEFAULT_PACKAGES if (stdlib / name / "__init__.py").is_file()]


def _words(text: str) -> Counter:
    return Counter(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))


def _single_line_statements(tree: ast.AST) -> list[ast.stmt]:
    """Simple (non-compound) statements that start and end on one line."""
    simple = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Raise, ast.Assert)
    return [n for n in ast.walk(tree) if isinstance(n, simple) and n.lineno == n.end_lineno]


def _used_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def _context(
    repo: Repository, target: str, needed: str, deps: dict[str, list[str]], counts: dict[str, int], budget: int
) -> tuple[str, tuple[str, ...]] | None:
    """The needed file, then the target's other imports while the token budget allows, in dependency order."""
    if counts[needed] > budget:
        return None
    chosen, used = [needed], counts[needed]
    for path in deps[target]:
        if path != needed and used + counts[path] <= budget:
            chosen.append(path)
            used += counts[path]
    files = repo.by_path()
    order = dependency_order(chosen, deps)
    return "".join(render_file(p, files[p].text) for p in order), tuple(order)


def build_tasks(
    roots: Sequence[str | Path],
    tokenizer,
    *,
    per_repository: int = 20,
    context_tokens: int = 2048,
    prefix_lines: int = 60,
    suffix_lines: int = 20,
    seed: int = 0,
) -> tuple[list[CrossFileTask], Counter]:
    """Tasks from each repository folder (deterministic by seed), and counts of candidates left out and why."""
    tasks, dropped = [], Counter()
    for root in roots:
        repo = read_repository(root)
        dropped.update({f"file {k}": v for k, v in repo.skipped.items()})
        package = package_name(root)
        deps = dependencies(repo, package)
        files = repo.by_path()
        definitions = {f.path: defined_names(f) for f in repo.files}
        candidates = []
        for f in repo.files:
            try:
                tree = ast.parse(f.text)
            except (SyntaxError, ValueError):
                dropped["file does not parse"] += 1
                continue
            lines = f.text.splitlines(keepends=True)
            own = definitions[f.path]
            in_file = _words(f.text)
            for node in _single_line_statements(tree):
                row = node.lineno - 1
                in_line = _words(lines[row])
                # a name that occurs only on this line of the whole file
                alone = {w for w, n in in_line.items() if in_file[w] == n and not w.startswith("__")}
                for name in sorted((_used_names(node) & alone) - _COMMON - own):
                    source = next((g for g in deps[f.path] if name in definitions[g]), None)
                    if source and len(name) >= 3:
                        candidates.append((f.path, row, name, source))
                        break
        rendered = [render_file(f.path, f.text) for f in repo.files]
        counts = dict(zip(files, map(len, tokenizer(rendered)["input_ids"]), strict=True))
        rng = random.Random(f"{seed}:{repo.name}")
        rng.shuffle(candidates)
        kept = 0
        for path, row, name, source in candidates:
            if kept >= per_repository:
                break
            context = _context(repo, path, source, deps, counts, context_tokens)
            if context is None:
                dropped["defining file longer than the context budget"] += 1
                continue
            lines = files[path].text.splitlines(keepends=True)
            middle = lines[row] if lines[row].endswith("\n") else lines[row] + "\n"
            text, context_files = context
            tasks.append(
                CrossFileTask(
                    task_id=f"{repo.name}/{path}:{row + 1}",
                    repository=repo.name,
                    path=path,
                    line=row + 1,
                    name=name,
                    defined_in=source,
                    prefix=header(path) + "".join(lines[max(0, row - prefix_lines) : row]),
                    middle=middle,
                    suffix="".join(lines[row + 1 : row + 1 + suffix_lines]),
                    context=text,
                    context_files=context_files,
                )
            )
            kept += 1
    return tasks, dropped


def exact_match(completion: str, middle: str) -> bool:
    """The first generated line equals the middle line, both whitespace-stripped."""
    return completion.split("\n", 1)[0].strip() == middle.strip()


def middle_loss(model, tokenizer, prefix: str, middle: str, suffix: str, *, suffix_first: bool = False) -> float:
    """Mean NLL per token of enc_nospace(middle) + ▁<EOT> after Meta's infilling prompt (teacher forcing)."""
    from codellama_hf.tokenizer import encode_infilling, infill_ids, infilling_prompt

    ids = infill_ids(tokenizer)
    target = [*encode_infilling(tokenizer, middle), ids.eot]
    if suffix_first:  # SPM carries prefix + middle encoded together after ▁<MID>; score the middle's part
        prompt = infilling_prompt(tokenizer, prefix, suffix, suffix_first=True)
        full = infilling_prompt(tokenizer, prefix + middle, suffix, suffix_first=True) + [ids.eot]
        scored = len(full) - len(prompt)
    else:
        full = infilling_prompt(tokenizer, prefix, suffix) + target
        scored = len(target)
    window = torch.tensor([full], device=model.device)
    return window_nll(model, window, scored, 1024) / scored


def evaluate_tasks(
    model,
    tokenizer,
    tasks: Sequence[CrossFileTask],
    *,
    suffix_first: bool = False,
    max_new_tokens: int = 64,
    batch_size: int = 4,
    generate: bool = True,
) -> dict:
    """Exact match and middle loss with and without the repository context, overall and per task."""
    from codellama_hf.generation import Decoding
    from codellama_hf.generation.hf import HFBackend

    if not tasks:
        raise ValueError("no cross-file tasks: give repositories whose files import each other")
    records = [{k: v for k, v in asdict(t).items() if k not in ("prefix", "suffix", "context")} for t in tasks]
    for variant, with_context in (("with_context", True), ("without_context", False)):
        prompts = [t.prompt(with_context) for t in tasks]
        for record, (prefix, suffix), task in zip(records, prompts, tasks, strict=True):
            record[f"loss_{variant}"] = middle_loss(
                model, tokenizer, prefix, task.middle, suffix, suffix_first=suffix_first
            )
        if generate:
            backend = HFBackend(model, tokenizer, batch_size=batch_size)
            out = backend.infill(
                [p for p, _ in prompts],
                [s for _, s in prompts],
                Decoding(max_new_tokens=max_new_tokens),
                suffix_first=suffix_first,
                progress=f"cross-file {variant}",
            )
            for record, completions, task in zip(records, out, tasks, strict=True):
                record[f"completion_{variant}"] = completions[0].text
                record[f"exact_{variant}"] = exact_match(completions[0].text, task.middle)
    n = len(records)
    metrics = {}
    for variant in ("with_context", "without_context"):
        if generate:
            metrics[f"exact_match_{variant}"] = sum(r[f"exact_{variant}"] for r in records) / n
        metrics[f"middle_loss_{variant}"] = sum(r[f"loss_{variant}"] for r in records) / n
    metrics["middle_loss_gain"] = metrics["middle_loss_without_context"] - metrics["middle_loss_with_context"]
    return {"metrics": metrics, "records": records}

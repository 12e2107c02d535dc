"""Quick evaluations while a stage trains: a transformers TrainerCallback, and the same evaluations standalone.

Forgetting of infilling or of HumanEval during a stage is otherwise found after it (DeepSeek-Coder, magicoder and
refact measured it by hand). Every `every_steps` optimizer steps and at the end, `QuickEvalCallback` runs a
configurable set on the current weights:

- `infilling`: cross-file infilling tasks (evaluation/crossfile.py), exact match and middle loss, with and without
  the repository context (nothing, not a failure, for a tokenizer without the infilling pieces);
- `perplexity`: perplexity by context length (evaluation/long_context.py) on a few files;
- `humaneval`: pass@1 of the first N HumanEval problems, greedy, scored in the sandbox, only with
  `allow_code_execution` (else reported as skipped).

Under ZeRO-3 every rank runs the same evaluation on the sharded model: each forward gathers the layers'
parameters collectively, so all ranks must make the same forwards. Teacher-forced losses do so by construction;
greedy generation here runs one prompt at a time and the ranks agree after every token whether to stop (an
all-reduce of a flag, as transformers' `synced_gpus`). The other ranks therefore wait only for the evaluation
itself. Sandbox scoring runs on the main process only (it has no collectives).

An evaluation that raises is counted (`quick_eval/failures`) and logged; training goes on. Results are logged
through the Trainer (TensorBoard and the other reporters), kept in `history`, and written atomically to
`<output_dir>/quick_evaluations.json`, which the stage's lineage.json carries for model cards; a run resumed from a
checkpoint keeps the evaluations made before it.
"""

from __future__ import annotations

import logging
import math
import os
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformers import TrainerCallback

from codellama_hf.io import write_json

logger = logging.getLogger(__name__)

EVALUATIONS = ("infilling", "perplexity", "humaneval")
RESULTS_FILE = "quick_evaluations.json"


@dataclass
class QuickEvalConfig:
    every_steps: int = 0  # 0: only at the end of training
    evaluations: tuple[str, ...] = ("infilling", "perplexity")
    repositories: tuple[str, ...] = ()  # infilling: held-out repository folders (default: standard-library ones)
    infilling_tasks: int = 8  # per repository
    context_tokens: int = 1024
    max_new_tokens: int = 32
    perplexity_files: tuple[str, ...] = ()  # default: standard-library files of at least 20 kB
    perplexity_lengths: tuple[int, ...] = (256, 1024)
    perplexity_max_files: int = 4
    humaneval_problems: int = 10
    humaneval_max_new_tokens: int = 256
    allow_code_execution: bool = False
    seed: int = 0

    def __post_init__(self):
        self.evaluations = tuple(self.evaluations)
        unknown = sorted(set(self.evaluations) - set(EVALUATIONS))
        if unknown:
            raise ValueError(f"unknown quick evaluations {unknown}; choose from {', '.join(EVALUATIONS)}")
        if self.every_steps < 0:
            raise ValueError(f"every_steps={self.every_steps}: must be >= 0 (0: only at the end)")
        for name in ("repositories", "perplexity_files", "perplexity_lengths"):
            setattr(self, name, tuple(getattr(self, name)))

    @classmethod
    def from_options(cls, options: dict | str | None, **settings) -> QuickEvalConfig:
        """`settings` (the recipe's quick_eval_* fields) plus `options` (a mapping, or its JSON), checked."""
        import json

        if isinstance(options, str):
            try:
                options = json.loads(options)
            except json.JSONDecodeError as err:
                raise ValueError(f"quick_eval_options={options!r}: not JSON ({err})") from None
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"quick_eval_options: unknown fields {unknown}; known: {sorted(known)}")
        clash = sorted(set(options) & set(settings))
        if clash:
            raise ValueError(f"quick_eval_options sets {clash}, which have their own quick_eval_* options")
        return cls(**settings, **options)


def _synced() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _is_main() -> bool:
    return not _synced() or torch.distributed.get_rank() == 0


def lockstep_greedy(model, prompt: list[int], max_new_tokens: int, eos: set[int], tokenizer=None, stop=()):
    """Greedy tokens after `prompt` (up to the first of `eos`, excluded), the KV cache reused.

    In a distributed run every rank steps until all ranks are done, so ZeRO-3's per-layer gathers stay matched."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    cache, out, done = DynamicCache(config=model.config), [], False
    for i in range(max_new_tokens):
        step = model(input_ids=ids if i == 0 else ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1)
        cache = step.cache
        token = int(step.logits[0, -1].argmax())
        ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
        if not done:
            if token in eos:
                done = True
            else:
                out.append(token)
                if stop and tokenizer is not None:
                    tail = tokenizer.decode(out[-64:], skip_special_tokens=True)
                    done = any(s in tail for s in stop)
        if _synced():
            flag = torch.tensor([0.0 if done else 1.0], device=device)
            torch.distributed.all_reduce(flag)
            if flag.item() == 0:
                break
        elif done:
            break
    return out


class QuickEvaluations:
    """The configured evaluations, their inputs built once (tasks, texts, problems); call with a model."""

    def __init__(self, tokenizer, config: QuickEvalConfig):
        self.tokenizer, self.config = tokenizer, config
        self._tasks = self._texts = self._problems = None

    def _infilling(self, model) -> dict:
        from codellama_hf.evaluation.crossfile import build_tasks, default_repositories, exact_match, middle_loss
        from codellama_hf.tokenizer import decode_infilling, infill_ids, infilling_prompt, supports_infilling

        c, tok = self.config, self.tokenizer
        if not supports_infilling(tok):  # a stage without the pieces (Llama 2, the Python branch): nothing to ask
            return {}
        if self._tasks is None:
            roots = [Path(r) for r in c.repositories] or default_repositories()[:2]
            self._tasks, _ = build_tasks(
                roots, tok, per_repository=c.infilling_tasks, context_tokens=c.context_tokens, seed=c.seed
            )
            if not self._tasks:
                raise ValueError(f"no cross-file infilling tasks in {[str(r) for r in roots]}")
        ids = infill_ids(tok)
        metrics = {}
        for variant, with_context in (("with_context", True), ("without_context", False)):
            losses, hits = [], []
            for task in self._tasks:
                prefix, suffix = task.prompt(with_context)
                losses.append(middle_loss(model, tok, prefix, task.middle, suffix))
                generated = lockstep_greedy(
                    model, infilling_prompt(tok, prefix, suffix), c.max_new_tokens, {ids.eos, ids.eot}
                )
                hits.append(exact_match(decode_infilling(tok, generated), task.middle))
            metrics[f"infill_exact_match_{variant}"] = sum(hits) / len(hits)
            metrics[f"infill_middle_loss_{variant}"] = sum(losses) / len(losses)
        return metrics

    def _perplexity(self, model) -> dict:
        from codellama_hf.evaluation.long_context import perplexity_by_length, stdlib_python_files

        c = self.config
        if self._texts is None:
            paths = [Path(p) for p in c.perplexity_files] or stdlib_python_files(20_000)[: c.perplexity_max_files]
            self._texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
        need = max(c.perplexity_lengths)
        result = perplexity_by_length(
            model, self.tokenizer, self._texts, c.perplexity_lengths, max_tokens_per_text=need + 1
        )
        return {f"perplexity@{k}": v for k, v in result["perplexity"].items()}

    def _humaneval(self, model) -> dict:
        from codellama_hf.evaluation.benchmarks import get_benchmark
        from codellama_hf.evaluation.prompts import apply_form
        from codellama_hf.evaluation.scoring import score

        c, tok = self.config, self.tokenizer
        if not c.allow_code_execution:
            return {}
        if self._problems is None:
            benchmark = get_benchmark("humaneval")
            benchmark.problems = [apply_form(p, "strip") for p in benchmark.problems]
            self._benchmark, self._problems = benchmark, benchmark.problems[: c.humaneval_problems]
        samples = []
        for problem in self._problems:
            prompt = tok(problem.prompt, add_special_tokens=True)["input_ids"]
            out = lockstep_greedy(model, prompt, c.humaneval_max_new_tokens, {tok.eos_token_id}, tok, problem.stop)
            text = tok.decode(prompt + out, skip_special_tokens=True)[
                len(tok.decode(prompt, skip_special_tokens=True)) :
            ]
            cut = min([text.index(s) for s in problem.stop if s in text], default=len(text))
            samples.append({"task_id": problem.task_id, "completion": text[:cut]})
        if not _is_main():
            return {}
        scored = score(self._benchmark, samples, allow_code_execution=True, ks=(1,), progress=False)
        return {"humaneval_pass@1": scored.metrics["pass@1"]}

    def __call__(self, model) -> tuple[dict, Counter]:
        """Metrics of every configured evaluation on `model`, and failures by evaluation (logged, not raised)."""
        metrics, failures = {}, Counter()
        was_training = model.training
        model.eval()
        try:
            for name in self.config.evaluations:
                try:
                    with torch.no_grad():
                        metrics.update(getattr(self, f"_{name}")(model))
                except Exception as err:  # a failing evaluation must not stop training
                    failures[name] += 1
                    logger.warning("quick evaluation %r failed: %s\n%s", name, err, traceback.format_exc(limit=3))
        finally:
            model.train(was_training)
        return metrics, failures


class QuickEvalCallback(TrainerCallback):
    """Runs QuickEvaluations every `every_steps` steps and at the end; `attach(trainer)` to log through it."""

    def __init__(self, tokenizer, config: QuickEvalConfig | None = None):
        self.config = config or QuickEvalConfig()
        self.evaluations = QuickEvaluations(tokenizer, self.config)
        self.history: list[dict] = []
        self.failures: Counter = Counter()
        self.trainer = None
        self._last_step = None

    def attach(self, trainer) -> QuickEvalCallback:
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    def _run(self, args, state, model) -> None:
        if self._last_step == state.global_step:
            return
        self._last_step = state.global_step
        metrics, failures = self.evaluations(model)
        self.failures.update(failures)
        record = {"step": state.global_step, "metrics": metrics, "failures": dict(failures)}
        self.history.append(record)
        logs = {f"quick_eval/{k}": v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}
        logs["quick_eval/failures"] = float(sum(self.failures.values()))
        if self.trainer is not None:
            self.trainer.log(logs)
        if _is_main():
            logger.info("quick evaluations at step %d: %s", state.global_step, metrics)
            if args.output_dir:
                write_json(Path(args.output_dir) / RESULTS_FILE, self.summary())

    def summary(self) -> dict:
        return {"config": asdict(self.config), "history": self.history, "failures": dict(self.failures)}

    def on_train_begin(self, args, state, control, **kwargs):
        """A resumed run keeps the evaluations written before its checkpoint (the curve stays whole)."""
        if state.global_step and not self.history and args.output_dir:
            earlier = read_quick_evaluations(args.output_dir) or {}
            self.history = [h for h in earlier.get("history", []) if h["step"] <= state.global_step]
            self.failures.update(earlier.get("failures", {}))
            if self.history and self.history[-1]["step"] == state.global_step:
                self._last_step = state.global_step  # evaluated at the checkpoint already: no second point there

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every = self.config.every_steps
        if every and state.global_step % every == 0:
            self._run(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._run(args, state, model)


def read_quick_evaluations(folder: str | os.PathLike) -> dict | None:
    """The quick evaluations a stage wrote into its output folder (None when it ran none)."""
    import json

    path = Path(folder) / RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None

"""The miniature's measurements, on the embedded corpus' held-out validation files only, each cached as one JSON.

Left-to-right loss and perplexity by context length (codellama_hf.evaluation.long_context), greedy single-line
infilling in PSM and SPM (codellama_hf.generation.infill) and the loss of the true middle after Meta's infilling
prompt.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from codellama_hf.io import write_json

from .presets import PYTHON_BRANCH
from .run import Run


def _load(path: Path):
    from codellama_hf.generation import load_model

    return load_model(str(path), dtype="float32", device="cpu")


def _validation_texts(kind: str, documents: int) -> list[str]:
    from codellama_hf.corpus import embedded_corpus

    return list(embedded_corpus(kind, "validation", max_documents=documents)["text"])


def validation_loss(run: Run, model_dir: Path, kind: str) -> dict:
    """Left-to-right loss on held-out files at the code stage's training length (mean NLL per token)."""
    from codellama_hf.evaluation.long_context import perplexity_by_length

    length = run.preset.stages["code"].seq_len
    model, tokenizer = _load(model_dir)
    result = perplexity_by_length(
        model,
        tokenizer,
        _validation_texts(kind, run.preset.eval_documents),
        [length],
        max_tokens_per_text=run.preset.eval_tokens_per_file,
    )
    ppl = result["perplexity"][str(length)]
    return {
        "model": model_dir.name,
        "corpus": f"{kind} (validation)",
        "context": length,
        "loss": math.log(ppl),
        "perplexity": ppl,
        "files": result["files"],
        "scored_tokens": result["scored_tokens"],
    }


def perplexity_by_context(run: Run, model_dir: Path) -> dict:
    from codellama_hf.evaluation.long_context import perplexity_by_length

    model, tokenizer = _load(model_dir)
    texts = _validation_texts("code", run.preset.eval_documents)
    result = perplexity_by_length(
        model, tokenizer, texts, run.preset.lcft_lengths, max_tokens_per_text=run.preset.eval_tokens_per_file
    )
    return {"model": model_dir.name, **result}


def infilling_examples(run: Run) -> list[dict]:
    """Single-line middles cut from held-out Python files: one line per file, chosen by the seed."""
    examples = []
    rng = random.Random(run.seed)
    for text in _validation_texts("python", 4 * run.preset.infill_examples):
        lines = text.splitlines(keepends=True)
        candidates = [
            i
            for i, line in enumerate(lines[5:-5], 5)
            if 8 <= len(line.strip()) <= 60 and not line.strip().startswith(("#", '"', "'"))
        ]
        if not candidates:
            continue
        i = rng.choice(candidates)
        prefix, suffix = "".join(lines[:i])[-600:], "".join(lines[i + 1 :])[:300]
        examples.append({"prefix": prefix, "suffix": suffix, "middle": lines[i]})
        if len(examples) == run.preset.infill_examples:
            break
    return examples


def infilling_exact_match(run: Run, model_dir: Path, examples: list[dict]) -> dict:
    """Greedy infilling in both formats; a hit when the first generated line equals the removed line."""
    from codellama_hf.generation import infill

    model, tokenizer = _load(model_dir)
    scores = {}
    for name, suffix_first in (("psm", False), ("spm", True)):
        middles = infill(
            model,
            tokenizer,
            [e["prefix"] for e in examples],
            [e["suffix"] for e in examples],
            suffix_first=suffix_first,
            max_new_tokens=run.preset.infill_max_new_tokens,
            batch_size=8,
            progress=f"infilling {model_dir.name} {name}",
        )
        hits = [
            (m.splitlines() or [""])[0].strip() == e["middle"].strip() for m, e in zip(middles, examples, strict=False)
        ]
        scores[name] = {
            "exact_match": sum(hits) / len(hits),
            "hits": sum(hits),
            "examples": len(hits),
            "per_example": hits,  # the same examples for every model: comparisons pair them (evaluation/compare.py)
            "middle_loss": middle_loss(model, tokenizer, examples, suffix_first),
            "first_completions": middles[:3],
        }
    return {"model": model_dir.name, **scores}


def middle_loss(model, tokenizer, examples: list[dict], suffix_first: bool) -> float:
    """Mean NLL per token of the true middle and <EOT> after Meta's infilling prompt: infilling ability measured
    below the level where greedy decoding gets whole lines right."""
    import torch

    from codellama_hf.tokenizer import encode_infilling, infill_ids, infilling_prompt

    eot = infill_ids(tokenizer).eot
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            prompt = infilling_prompt(tokenizer, e["prefix"], e["suffix"], suffix_first=suffix_first)
            target = [*encode_infilling(tokenizer, e["middle"].rstrip("\n")), eot]
            logits = model(torch.tensor([prompt + target])).logits[0, len(prompt) - 1 : -1]
            total += torch.nn.functional.cross_entropy(logits.float(), torch.tensor(target), reduction="sum").item()
            count += len(target)
    return total / count


def evaluate(run: Run) -> None:
    models = {name: run.model(name) for name in ("code", "code-nofim", PYTHON_BRANCH, "python", "lcft", "instruct")}
    measurements = {
        "loss_code_fim": lambda: validation_loss(run, models["code"], "code"),
        "loss_code_nofim": lambda: validation_loss(run, models["code-nofim"], "code"),
        "loss_python_code": lambda: validation_loss(run, models[PYTHON_BRANCH], "python"),  # the python stage's start
        "loss_python_python": lambda: validation_loss(run, models["python"], "python"),
        "ppl_code": lambda: perplexity_by_context(run, models["code"]),
        "ppl_lcft": lambda: perplexity_by_context(run, models["lcft"]),
        "infill_fim": lambda: infilling_exact_match(run, models["code"], infilling_examples(run)),
        "infill_nofim": lambda: infilling_exact_match(run, models["code-nofim"], infilling_examples(run)),
        # infilling before instruct tuning (the LCFT model it continues) and after it (7B/13B Instruct infill)
        "infill_before_instruct": lambda: infilling_exact_match(run, models["lcft"], infilling_examples(run)),
        "infill_instruct": lambda: infilling_exact_match(run, models["instruct"], infilling_examples(run)),
    }
    for name, measure in measurements.items():
        path = run.path("eval", f"{name}.json")
        run.step(f"evaluate {name}", path, lambda measure=measure, path=path: write_json(path, measure()))
    _write_results_for_cards(run)


def _write_results_for_cards(run: Run) -> None:
    """The family members' measured numbers as codellama_hf.eval/1 results, which the model cards show."""
    from codellama_hf.evaluation.report import new_result, write_result

    ppl = json.loads(run.path("eval", "ppl_lcft.json").read_text())
    result = new_result(
        "perplexity",
        str(run.model("lcft")),
        details=ppl,
        num_problems=ppl["files"],
        metrics={f"perplexity@{k}": v for k, v in ppl["perplexity"].items()},
        config={"corpus": "embedded code (validation)", "lengths": ppl["lengths"]},
    )
    write_result(run.path("eval", "results", "lcft"), result)
    loss = json.loads(run.path("eval", "loss_python_python.json").read_text())
    result = new_result(
        "perplexity",
        str(run.model("python")),
        num_problems=loss["files"],
        metrics={f"perplexity@{loss['context']}": loss["perplexity"]},
        config={"corpus": "embedded python (validation)"},
    )
    write_result(run.path("eval", "results", "python"), result)

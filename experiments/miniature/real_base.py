"""The miniature on a real pretrained base: SmolLM2-135M-Instruct (a registry asset, codellama_hf.assets) continued
through the Code Llama recipe, and the paper's claims measured on public benchmarks with confidence intervals.

    codellama-hf reproduce --preset smollm2 --out DIR     (CPU, ~30 min idle on 2 cores)
    codellama-hf reproduce --preset gpu --out DIR         (one GPU, ~15 min)

Lineage (the paper's Figure 2 with SmolLM2 in Llama 2's place):

    SmolLM2 (49,152 pieces) --+-- code, FIM 0.9, + <PRE> <SUF> <MID> <EOT> (49,156 rows) -- lcft -- instruct
                              +-- code-nofim (same data and budget, 49,152 rows) ------- python

Every weight is trained (bf16 autocast): the FIM tokens' rows must learn both their input embedding and, tied,
their output row, which needs gradients through the whole stack anyway, so freezing layers saves little.
Measurements (one cached JSON each under DIR/eval): HumanEval pass@1 (greedy, the N problems with the shortest
canonical solutions) of the base, code and instruct models; exact match and pass@1 on a seeded subset of
HumanEval single-line infilling (PSM, SPM) for the FIM model and the no-FIM model (given the same four tokens at
the mean embedding, untrained, as a model trained without FIM would meet them); perplexity by context length
before and after LCFT; and the tiny
report's left-to-right claims (FIM's cost, the Python stage's gain).
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from pathlib import Path

from codellama_hf.io import write_json, write_text

from .run import Run, console

NO_FIM = "code-nofim"
FIM_RATE = "0.9"
TEMPLATE = Path(__file__).with_name("report_real.md.j2")


def base_model(run: Run) -> Path:
    from codellama_hf.assets import smollm2_dir

    if run.preset.base != "smollm2":
        raise ValueError(f"preset {run.preset_name}: unknown real base {run.preset.base!r} (only smollm2)")
    return smollm2_dir()


class LoadSampler:
    """The machine's 1-minute load average every `every` seconds while the run works (the report's context: the
    CPU is shared, so wall time alone says little)."""

    def __init__(self, every: float = 30.0):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while True:
            self.samples.append(round(os.getloadavg()[0], 2))
            if self._stop.wait(self.every):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def reproduce_real(run: Run) -> Path:
    """The real-base pipeline into run.out (each step skipped when its output exists); returns the report's path."""
    from codellama_hf.tokenizer.bpe import add_fim_tokens_to_folder

    from .pipeline import code_pieces, self_instruct, train

    started, wall = time.monotonic(), time.time()
    with LoadSampler() as load:
        base = base_model(run)
        tokenizer = run.path("tokenizer-fim")
        run.step("tokenizer", tokenizer / "tokenizer.json", lambda: add_fim_tokens_to_folder(base, tokenizer))
        mixture = run.path("data", "code-mixture.yaml")
        run.step("data", mixture, lambda: code_pieces(run))
        common = _precision(run)
        data = ["--dataset_mixture", str(mixture), *common]
        arms = {
            "code": ["--tokenizer_name_or_path", str(tokenizer), "--resize_token_embeddings", "true"],
            NO_FIM: [],
        }
        for name, extra in arms.items():
            rate = FIM_RATE if name == "code" else "0.0"
            folder = run.model(name)
            argv = ["--model_name_or_path", str(base), *data, "--fim_rate", rate, *extra]
            run.step(name, folder / "lineage.json", lambda f=folder, a=argv: train(run, "code", f, a))
        for name, start in (("python", NO_FIM), ("lcft", "code")):
            folder = run.model(name)
            argv = ["--model_name_or_path", str(run.model(start)), *common]
            run.step(name, folder / "lineage.json", lambda f=folder, n=name, a=argv: train(run, n, f, a))
        run.step("selfinstruct", run.path("selfinstruct", "summary.json"), lambda: self_instruct(run))
        instruct = run.model("instruct")
        sources = json.dumps({"instruct": ["selfinstruct/dataset"]})
        argv = ["--model_name_or_path", str(run.model("lcft")), "--mixture_sources", sources, *common]
        run.step("instruct", instruct / "lineage.json", lambda: train(run, "instruct", instruct, argv))
        evaluate_real(run, base)
    seconds = time.monotonic() - started
    history = run.path("report", "runs.json")
    runs = json.loads(history.read_text()) if history.is_file() else []
    runs.append(
        {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(wall)),
            "seconds": round(seconds, 1),
            "steps": run.timings,
            "load_1min": load.samples,
            "cpus": os.cpu_count(),
        }
    )
    write_json(history, runs)
    path = write_real_report(run, runs)
    console.print(f"[bold green]report: {path}[/bold green] ({seconds:.0f} s this run)")
    return path


def _precision(run: Run) -> list[str]:
    """bf16 autocast over fp32 weights; on a CPU transformers wants that asked for explicitly (use_cpu)."""
    import torch

    if not run.preset.bf16:
        return []
    return ["--bf16", "true"] if torch.cuda.is_available() else ["--bf16", "true", "--use_cpu", "true"]


# --- measurements --------------------------------------------------------------------------------------------------


def _dtype(run: Run) -> str:
    return "bfloat16" if run.preset.bf16 else "float32"


def _backend(run: Run, model_dir: Path, tokenizer_dir: Path | None = None):
    """An HFBackend for `model_dir`; with `tokenizer_dir`, the model's embeddings grown to that tokenizer first
    (new rows at the mean embedding, as the code stage starts: the no-FIM model meeting the FIM tokens)."""
    from transformers import AutoTokenizer

    from codellama_hf.generation import HFBackend, load_model

    model, tokenizer = load_model(str(model_dir), dtype=_dtype(run))
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return HFBackend(model, tokenizer, batch_size=run.preset.eval_batch_size)


def _code_files(kind: str, count: int, tokenizer, min_tokens: int) -> list[str]:
    """The first `count` held-out validation files of the embedded corpus with at least `min_tokens` tokens."""
    from codellama_hf.corpus import embedded_corpus

    texts = []
    for text in embedded_corpus(kind, "validation")["text"]:
        if len(tokenizer(text)["input_ids"]) >= min_tokens:
            texts.append(text)
            if len(texts) == count:
                break
    return texts


def perplexity(run: Run, model_dir: Path, lengths, kind: str = "code", max_tokens: int | None = None) -> dict:
    """Perplexity at each context length over the same scored tokens of the same files (long_context.py); each file
    cut to max(lengths) + 1 tokens (or `max_tokens`), so longer contexts cost no more tokens than they must."""
    from codellama_hf.evaluation.long_context import perplexity_by_length
    from codellama_hf.generation import load_model

    model, tokenizer = load_model(str(model_dir), dtype=_dtype(run))
    need = max(lengths) + 1
    texts = _code_files(kind, run.preset.eval_documents, tokenizer, need)
    result = perplexity_by_length(model, tokenizer, texts, lengths, max_tokens_per_text=max_tokens or need)
    return {"model": model_dir.name, "corpus": f"{kind} (validation)", **result}


def validation_loss(run: Run, model_dir: Path, kind: str) -> dict:
    """Left-to-right loss (mean NLL per token) on held-out files at the code stage's training length."""
    length = run.preset.stages["code"].seq_len
    result = perplexity(run, model_dir, [length], kind)
    ppl = result["perplexity"][str(length)]
    return {**result, "context": length, "loss": math.log(ppl)}


def infill_task_ids(run: Run) -> list[str]:
    """A seeded subset of HumanEval single-line infilling (1,033 lines of 164 solutions), in benchmark order."""
    from codellama_hf.evaluation.benchmarks import get_benchmark

    ids = [p.task_id for p in get_benchmark("humaneval-infill-single").problems]
    keep = set(random.Random(run.seed).sample(ids, min(run.preset.infill_examples, len(ids))))
    return [i for i in ids if i in keep]


def infilling(run: Run, model_dir: Path, tokenizer_dir: Path | None = None) -> dict:
    """Greedy single-line infilling in PSM and SPM: exact match (first generated line equals the removed line,
    whitespace-stripped) and pass@1 (the solution with that line runs HumanEval's tests in the sandbox)."""
    from codellama_hf.evaluation.benchmarks import get_benchmark
    from codellama_hf.evaluation.crossfile import middle_loss
    from codellama_hf.evaluation.runner import ExecutionSettings, GenerationSettings, evaluate_execution

    backend = _backend(run, model_dir, tokenizer_dir)
    ids = infill_task_ids(run)
    problems = {p.task_id: p for p in get_benchmark("humaneval-infill-single").problems}
    references = {t: p.reference for t, p in problems.items()}
    out = {"model": model_dir.name, "tokenizer": str(tokenizer_dir or model_dir)}
    for fmt in ("psm", "spm"):
        folder = run.path("eval", "samples", f"infill-{model_dir.name}")
        result = evaluate_execution(
            "humaneval-infill-single",
            backend,
            model_dir.name,
            folder,
            generation=GenerationSettings(
                max_new_tokens=run.preset.infill_max_new_tokens, batch_size=run.preset.eval_batch_size
            ),
            execution=ExecutionSettings(allow_code_execution=True),
            infill_format=fmt,
            task_ids=ids,
        )
        samples = [json.loads(line) for line in (folder / result["samples_file"]).read_text().splitlines()]
        hits = [(s["completion"].splitlines() or [""])[0].strip() == references[s["task_id"]].strip() for s in samples]
        out[fmt] = {
            "exact_match": sum(hits) / len(hits),
            "hits": sum(hits),
            "examples": len(hits),
            "pass@1": result["metrics"].get("pass@1"),
            "passed": round(result["metrics"].get("pass@1", 0.0) * result["num_problems"]),
            "first_completions": [s["completion"] for s in samples[:3]],
            # graded where exact match is all-or-nothing: NLL per token of the removed line and <EOT> after the
            # infilling prompt (teacher forcing), per task, so the two models compare paired
            "middle_loss": {
                t: middle_loss(
                    backend.model,
                    backend.tokenizer,
                    problems[t].prompt,
                    problems[t].reference,
                    problems[t].suffix,
                    suffix_first=fmt == "spm",
                )
                for t in ids
            },
        }
    return out


def humaneval_task_ids(run: Run) -> list[str]:
    """The N HumanEval problems with the shortest canonical solutions (ties in benchmark order).

    A 135M model solves almost none of the first N problems, so equal zeros would hide every difference between
    models; the shortest solutions are the problems within its reach (and the cheapest to generate on a CPU).
    The report says so: these scores are not comparable with pass@1 on all 164 problems.
    """
    from codellama_hf.evaluation.benchmarks import get_benchmark

    problems = get_benchmark("humaneval").problems
    if run.preset.humaneval_problems >= len(problems):
        return [p.task_id for p in problems]
    order = sorted(range(len(problems)), key=lambda i: (len(problems[i].reference or ""), i))
    keep = set(order[: run.preset.humaneval_problems])
    return [p.task_id for i, p in enumerate(problems) if i in keep]


def humaneval(run: Run, model_dir: Path, style: str) -> dict:
    """Greedy pass@1 on the preset's HumanEval problems (prompt form chosen per tokenizer; style as given)."""
    from codellama_hf.evaluation.runner import ExecutionSettings, GenerationSettings, evaluate_execution

    backend = _backend(run, model_dir)
    result = evaluate_execution(
        "humaneval",
        backend,
        model_dir.name,
        run.path("eval", "samples", f"humaneval-{model_dir.name}-{style}"),
        generation=GenerationSettings(
            max_new_tokens=run.preset.humaneval_max_new_tokens, batch_size=run.preset.eval_batch_size
        ),
        execution=ExecutionSettings(allow_code_execution=True),
        task_ids=humaneval_task_ids(run),
        prompt_style=style,
    )
    problems = result["num_problems"]
    return {
        "model": model_dir.name,
        "style": style,
        "prompt": result["config"]["prompt"],
        "task_ids": result["config"]["task_ids"],
        "pass@1": result["metrics"]["pass@1"],
        "passed": round(result["metrics"]["pass@1"] * problems),
        "problems": problems,
        "failures": result["failures"],
        "generation": result["generation"],
    }


def evaluate_real(run: Run, base: Path) -> None:
    models = {name: run.model(name) for name in ("code", NO_FIM, "python", "lcft", "instruct")}
    fim_tokenizer = run.path("tokenizer-fim")
    length = run.preset.stages["code"].seq_len
    measurements = {
        "loss_python_code": lambda: validation_loss(run, models[NO_FIM], "python"),  # the python stage's start
        "loss_python_python": lambda: validation_loss(run, models["python"], "python"),
        "ppl_code": lambda: perplexity(run, models["code"], run.preset.lcft_lengths),
        "ppl_lcft": lambda: perplexity(run, models["lcft"], run.preset.lcft_lengths),
        # FIM's cost to left-to-right: the no-FIM twin on ppl_code's files and scored tokens at the code length
        "ppl_nofim": lambda: perplexity(run, models[NO_FIM], [length], max_tokens=max(run.preset.lcft_lengths) + 1),
        "infill_fim": lambda: infilling(run, models["code"]),
        "infill_nofim": lambda: infilling(run, models[NO_FIM], fim_tokenizer),
        "humaneval_base_completion": lambda: humaneval(run, base, "completion"),
        "humaneval_base_chat": lambda: humaneval(run, base, "chat"),
        "humaneval_code_completion": lambda: humaneval(run, models["code"], "completion"),
        "humaneval_instruct_chat": lambda: humaneval(run, models["instruct"], "chat"),
    }
    for name, measure in measurements.items():
        path = run.path("eval", f"{name}.json")
        run.step(f"evaluate {name}", path, lambda measure=measure, path=path: write_json(path, measure()))


# --- report --------------------------------------------------------------------------------------------------------


def wilson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927; scipy.stats.binomtest): sound at 0/n and n/n,
    where the normal approximation collapses to a point."""
    from scipy.stats import binomtest

    if trials == 0:
        return (0.0, 1.0)
    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return (ci.low, ci.high)


def _rate(successes: int, trials: int) -> dict:
    low, high = wilson(successes, trials)
    return {"k": successes, "n": trials, "rate": successes / trials if trials else 0.0, "low": low, "high": high}


def real_claims(run: Run) -> dict:
    from codellama_hf.evaluation.compare import paired_change

    def read(name):
        return json.loads(run.path("eval", f"{name}.json").read_text())

    length = str(run.preset.stages["code"].seq_len)
    fim_ppl, nofim_ppl = read("ppl_code"), read("ppl_nofim")
    fim = {"loss": math.log(fim_ppl["perplexity"][length]), "scored_tokens": fim_ppl["scored_tokens"]}
    nofim = {"loss": math.log(nofim_ppl["perplexity"][length])}
    gap = fim["loss"] - nofim["loss"]
    infill = {"fim": read("infill_fim"), "no_fim": read("infill_nofim")}
    em = {
        f: {arm: _rate(infill[arm][f]["hits"], infill[arm][f]["examples"]) for arm in infill} for f in ("psm", "spm")
    }
    passed = {
        f: {arm: _rate(infill[arm][f]["passed"], infill[arm][f]["examples"]) for arm in infill} for f in ("psm", "spm")
    }
    middle = {
        f: paired_change(infill["no_fim"][f]["middle_loss"], infill["fim"][f]["middle_loss"]) for f in ("psm", "spm")
    }
    ppl_code, ppl_lcft = read("ppl_code"), read("ppl_lcft")
    base_len = str(run.preset.stages["code"].seq_len)
    beyond = [k for k in ppl_code["perplexity"] if int(k) > int(base_len)]
    runs = {
        name: read(f"humaneval_{name}")
        for name in ("base_completion", "base_chat", "code_completion", "instruct_chat")
    }
    he = {
        name: {**_rate(r["passed"], r["problems"]), "style": r["style"], "form": r["prompt"]}
        for name, r in runs.items()
    }
    py_code, py_python = read("loss_python_code"), read("loss_python_python")

    def separated(a, b):  # a above b with non-overlapping 95% intervals
        return a["low"] > b["high"]

    return {
        "preset": run.preset_name,
        "seed": run.seed,
        "fim_gives_infilling": {
            "exact_match": em,
            "pass@1": passed,
            "held": all(em[f]["fim"]["k"] > em[f]["no_fim"]["k"] for f in ("psm", "spm")),
            "intervals_separate": all(separated(em[f]["fim"], em[f]["no_fim"]) for f in ("psm", "spm")),
            # before = no FIM, after = FIM: a negative change with its interval below 0 is FIM's gain
            "middle_loss": middle,
            "middle_loss_lower": all(middle[f]["ci95"][1] < 0 for f in ("psm", "spm")),
        },
        "fim_costs_little_left_to_right": {
            "loss_fim": fim["loss"],
            "loss_no_fim": nofim["loss"],
            "difference": gap,
            "threshold": 0.05 * nofim["loss"],
            "held": gap <= 0.05 * nofim["loss"],
            "scored_tokens": fim["scored_tokens"],
        },
        "humaneval": {
            "runs": he,
            "code_over_base_completion": he["code_completion"]["k"] > he["base_completion"]["k"],
            "instruct_chat_over_code_completion": he["instruct_chat"]["k"] > he["code_completion"]["k"],
            "instruct_chat_at_least_base_chat": he["instruct_chat"]["k"] >= he["base_chat"]["k"],
        },
        "lcft_lowers_long_context_perplexity": {
            "base_length": int(base_len),
            "lengths_beyond": beyond,
            "perplexity_code": ppl_code["perplexity"],
            "perplexity_lcft": ppl_lcft["perplexity"],
            "files": ppl_code["files"],
            "scored_tokens": ppl_code["scored_tokens"],
            "held": bool(beyond) and all(ppl_lcft["perplexity"][k] < ppl_code["perplexity"][k] for k in beyond),
        },
        "python_stage_lowers_python_loss": {
            "loss_code_model": py_code["loss"],
            "loss_python_model": py_python["loss"],
            "held": py_python["loss"] < py_code["loss"],
        },
    }


def write_real_report(run: Run, runs: list[dict]) -> Path:
    import jinja2

    folder = run.path("report")
    numbers = real_claims(run)
    write_json(folder / "claims.json", numbers)
    loads = [x for r in runs for x in r["load_1min"]]
    template = jinja2.Template(TEMPLATE.read_text(encoding="utf-8"), keep_trailing_newline=True)
    text = template.render(
        preset=run.preset_name,
        seed=run.seed,
        command=run.command(),
        stages=run.preset.stages,
        p=run.preset,
        c=numbers,
        runs=runs,
        wall=sum(r["seconds"] for r in runs),
        load={"min": min(loads), "mean": sum(loads) / len(loads), "max": max(loads)} if loads else None,
        selfinstruct=json.loads(run.path("selfinstruct", "summary.json").read_text()),
    )
    return write_text(folder / "report.md", text)

"""Model cards written from what a model folder records, never from numbers typed by hand.

Every figure in a card comes from one of four places: the folder's config.json (architecture, theta, context),
its safetensors headers (parameter count, dtype), its tokenizer files (infilling pieces, chat template) and its
lineage.json (each training stage back to the first: data mixture, tokens, steps, hyperparameters, versions),
plus the evaluation results JSON written by codellama_hf.evaluation (schema codellama_hf.eval/1). The sections
follow Meta's Code Llama model card (codellama.md §4): Model Use, Model Details, Intended Use, Hardware and
Software, Training Data, Evaluation Results, Ethical Considerations and Limitations. The YAML header carries the
Hub metadata (license, language, pipeline_tag, tags, base_model, datasets and a model-index of the measured
results) and is checked by parsing the card back with huggingface_hub's ModelCard.

    codellama-hf card outputs/7b/lcft --results eval_results/lcft --variant 7b --repo-id me/CodeLlama-7b-hf
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from codellama_hf.io import read_json_object, write_text
from codellama_hf.load import KINDS, Variant, parse_slot, variant_from_name
from codellama_hf.tokenizer import SENTINELS

LINEAGE_FILE = "lineage.json"
PAPER = "https://arxiv.org/abs/2308.12950"
TOOLKIT = "codellama_hf"
# Results task -> (Hub dataset id, pretty name, dataset config) for the model-index.
_HUB_DATASETS = {
    "humaneval": ("openai/openai_humaneval", "HumanEval", None),
    "mbpp": ("google-research-datasets/mbpp", "MBPP", None),
}
_INFILL_CONFIGS = {
    "single": "HumanEval-SingleLineInfilling",
    "multi": "HumanEval-MultiLineInfilling",
    "random": "HumanEval-RandomSpanInfilling",
}


# ---------------------------------------------------------------------------------------------------------------
# Facts about a model folder
# ---------------------------------------------------------------------------------------------------------------


def safetensors_summary(folder: Path) -> tuple[int, str]:
    """(parameter count, dominant dtype) from the safetensors headers, without reading any tensor."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    count, by_dtype = 0, {}
    for path in files:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = math.prod(info["shape"])
            count += n
            by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + n
    return count, max(by_dtype, key=by_dtype.get)


def _tokenizer_facts(folder: Path, vocab_rows: int) -> tuple[bool, bool]:
    """(infilling pieces present within the embedding rows, chat template present)."""
    spec = read_json_object(folder / "tokenizer.json", "the tokenizer")
    ids = dict(spec.get("model", {}).get("vocab", {}))
    ids.update({t["content"]: t["id"] for t in spec.get("added_tokens", [])})
    infilling = all(piece in ids and ids[piece] < vocab_rows for piece in SENTINELS)
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = read_json_object(config_path, "the tokenizer") if config_path.is_file() else {}
    chat = bool(tokenizer_config.get("chat_template")) or (folder / "chat_template.jinja").is_file()
    return infilling, chat


def lineage_chain(lineage: dict, path: Path) -> list[dict]:
    """The stages that made a model, first to last (each lineage nests the one of the model it started from)."""
    chain, current = [], lineage
    while current is not None:
        if not isinstance(current, dict) or "stage" not in current or "base_model" not in current:
            raise ValueError(
                f"{path}: a lineage record needs 'stage' and 'base_model' (written by codellama_hf.training)"
            )
        chain.append(current)
        current = (current.get("base_model") or {}).get("lineage")
    return chain[::-1]


@dataclass
class ModelFacts:
    """Everything a card states about a model, read from its folder."""

    folder: Path
    config: dict
    parameters: int
    dtype: str
    infilling: bool
    chat: bool
    stages: list[dict]

    @property
    def lineage(self) -> dict:
        return self.stages[-1]

    @property
    def theta(self) -> float:
        params = self.config.get("rope_parameters") or {}
        return float(params.get("rope_theta", self.config.get("rope_theta", 10_000.0)))

    @property
    def root(self) -> dict:
        return self.stages[0]["base_model"]


def read_facts(folder: str | os.PathLike) -> ModelFacts:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    lineage_path = folder / LINEAGE_FILE
    if not lineage_path.is_file():
        raise FileNotFoundError(
            f"{lineage_path}: not found. Cards are written from the lineage a codellama_hf "
            "training stage saves with its model; this folder has none"
        )
    config = read_json_object(folder / "config.json", "the model config")
    parameters, dtype = safetensors_summary(folder)
    infilling, chat = _tokenizer_facts(folder, config.get("vocab_size", 0))
    stages = lineage_chain(read_json_object(lineage_path, "the model lineage"), lineage_path)
    return ModelFacts(folder, config, parameters, dtype, infilling, chat, stages)


def read_results(folders) -> list[dict]:
    """Evaluation results (codellama_hf.eval/1) from one or more folders, one per task (a later folder wins)."""
    from codellama_hf.evaluation.report import load_results

    by_task = {}
    for folder in [folders] if isinstance(folders, (str, os.PathLike)) else list(folders or []):
        for result in load_results(folder):
            by_task[result["task"]] = result
    return [by_task[task] for task in sorted(by_task)]


# ---------------------------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------------------------


def _dataset_of(task: str) -> tuple[str, str, str | None] | None:
    if task in _HUB_DATASETS:
        return _HUB_DATASETS[task]
    if task.startswith("multiple-"):
        lang = task.removeprefix("multiple-")
        return "nuprl/MultiPL-E", f"MultiPL-E HumanEval ({lang})", f"humaneval-{lang}"
    match = re.fullmatch(r"humaneval-infill-(single|multi|random)-(psm|spm)", task)
    if match:
        kind, layout = match.groups()
        return (
            "loubnabnl/humaneval_infilling",
            f"HumanEval infilling ({kind}-line, {layout.upper()})",
            _INFILL_CONFIGS[kind],
        )
    return None


def eval_results(results: list[dict]):
    """model-index entries: complete, measured runs of benchmarks that have a Hub dataset.

    Runs on a subset of problems (--limit) and skipped tasks stay out of the metadata (leaderboards read it);
    the card's table shows them with a note.
    """
    from huggingface_hub import EvalResult

    out = []
    for r in results:
        dataset = _dataset_of(r["task"])
        if dataset is None or r.get("skipped") or r.get("num_problems") != r.get("total_problems"):
            continue
        dataset_id, dataset_name, config = dataset
        infill = r["task"].startswith("humaneval-infill-")
        for metric, value in r["metrics"].items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.append(
                    EvalResult(
                        task_type="text-generation",
                        task_name="Code infilling" if infill else "Code generation",
                        dataset_type=dataset_id,
                        dataset_name=dataset_name,
                        dataset_config=config,
                        dataset_split="test",
                        metric_type=metric,
                        metric_name=metric,
                        metric_value=value,
                    )
                )
    return out


def _is_hub_dataset(spec) -> str | None:
    if isinstance(spec, dict) and isinstance(spec.get("dataset"), str):
        return spec["dataset"]
    if isinstance(spec, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not Path(spec).exists():
        return spec
    return None


def hub_datasets(stages: list[dict]) -> list[str]:
    """Hub datasets named among the sources of every stage."""
    found = []
    for stage in stages:
        data = stage.get("data") or {}
        specs = list(data.get("sources") or [])
        for value in (data.get("mixture_sources") or {}).values():
            specs += value if isinstance(value, list) else [value]
        for spec in specs:
            name = _is_hub_dataset(spec)
            if name and name not in found:
                found.append(name)
    return found


# ---------------------------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CardOptions:
    """What the folder cannot know: where the model is published and how it relates to its family."""

    repo_id: str | None = None
    variant: Variant | None = None
    base_model: str | None = None  # Hub id of the model it was trained from (default: a family member's repo)
    license: str = "llama2"
    developer: str | None = None
    family: dict = field(default_factory=dict)  # Variant -> repo id, for the family table
    published: dict = field(default_factory=dict)  # resolved local folder -> repo id, to name parents


def _fmt_int(n) -> str:
    return f"{int(n):,}"


def _fmt_float(x) -> str:
    return "-" if x is None else f"{x:g}"


def _short(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _started_from(stage: dict, options: CardOptions) -> str:
    base = stage["base_model"]
    if base.get("random_init"):
        return f"random {base['random_init']} initialisation (seed {base.get('seed')})"
    name = base.get("name_or_path") or "?"
    repo = options.published.get(str(Path(name).resolve())) if name != "?" else None
    return f"[{repo}](https://huggingface.co/{repo})" if repo else f"`{name}`"


def _parent_repo(facts: ModelFacts, options: CardOptions) -> str | None:
    if options.base_model:
        return options.base_model
    for stage in reversed(facts.stages):
        name = stage["base_model"].get("name_or_path")
        if name and str(Path(name).resolve()) in options.published:
            return options.published[str(Path(name).resolve())]
    return None


def _capabilities(facts: ModelFacts, variant: Variant | None) -> list[str]:
    python = variant is not None and variant.kind == "python"
    rows = [
        ("Code completion", True),
        ("Infilling", facts.infilling),
        ("Instructions / chat", facts.chat),
        ("Python specialist", python),
    ]
    return [f"- [{'x' if on else ' '}] {name}." for name, on in rows]


def _usage(facts: ModelFacts, model_ref: str) -> str:
    lines = [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{model_ref}")',
        f'model = AutoModelForCausalLM.from_pretrained("{model_ref}", dtype="auto", device_map="auto")',
        'inputs = tokenizer("def fibonacci(n):", return_tensors="pt").to(model.device)',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))",
        "```",
        "",
        f"With `pip install {TOOLKIT}`, which builds Meta's exact prompts:",
        "",
        "```python",
        "from codellama_hf import load",
        "",
        f'model = load("{model_ref}")  # quantization="4bit" on one GPU',
        'print(model.generate("def fibonacci(n):"))',
    ]
    if facts.infilling:
        prefix, suffix = 'def remove_non_ascii(s: str) -> str:\n    """ ', "\n    return result\n"
        lines.append(f"print(model.infill({prefix!r}, {suffix!r}))")
    if facts.chat:
        lines.append('print(model.chat([{"role": "user", "content": "Write a function that reverses a list."}]))')
    lines.append("```")
    if facts.infilling:
        lines += [
            "",
            "Infilling prompts are Meta's `<s>▁<PRE> prefix ▁<SUF>suffix ▁<MID>` (PSM) or "
            "`<s>▁<PRE>▁<SUF>suffix ▁<MID> prefix` (SPM) token sequences; generation ends at `▁<EOT>`. "
            "This tokenizer treats transformers' `<FILL_ME>` as plain text: build infilling prompts with "
            "`codellama_hf` (`load(...).infill`) or `codellama_hf.tokenizer.infilling_prompt`.",
        ]
    return "\n".join(lines)


def _architecture(facts: ModelFacts) -> str:
    c = facts.config
    rows = [
        ("Parameters", f"{_fmt_int(facts.parameters)} ({_short(facts.parameters)})"),
        ("Layers", c.get("num_hidden_layers")),
        ("Hidden size", c.get("hidden_size")),
        ("FFN size", c.get("intermediate_size")),
        ("Attention heads", c.get("num_attention_heads")),
        ("Key-value heads", c.get("num_key_value_heads", c.get("num_attention_heads"))),
        ("Vocabulary", _fmt_int(c.get("vocab_size", 0))),
        ("RoPE theta", f"{facts.theta:,.0f}"),
        ("Max positions", _fmt_int(c.get("max_position_embeddings", 0))),
        ("Weights dtype", facts.dtype),
    ]
    return "\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


def _method(stage: dict) -> str:
    """Full fine-tuning, or the LoRA settings merge_and_save recorded."""
    adapter = stage.get("adapter")
    if not adapter:
        return "full"
    lora = adapter.get("lora") or {}
    quantized = {"4bit": ", 4-bit base (QLoRA)", "8bit": ", 8-bit base"}.get(adapter.get("quantization"), "")
    return f"LoRA r={lora.get('r')}, alpha {lora.get('alpha')}{quantized}"


def _stage_table(facts: ModelFacts, options: CardOptions) -> str:
    lines = [
        "| # | stage | started from | method | tokens seen | steps | tokens/step | seq len | peak lr | theta | "
        "FIM rate | finished |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(facts.stages, 1):
        data, hp, plan = s.get("data") or {}, s.get("hyperparameters") or {}, s.get("plan") or {}
        fim = (data.get("fim") or {}).get("rate")
        lines.append(
            f"| {i} | {s['stage']} | {_started_from(s, options)} | {_method(s)} | "
            f"{_fmt_int(s.get('tokens_seen', 0))} | {_fmt_int(s.get('steps', 0))} | "
            f"{_fmt_int(plan.get('tokens_per_step', 0))} | "
            f"{_fmt_int(plan.get('seq_len', data.get('seq_len', 0)))} | "
            f"{_fmt_float(hp.get('learning_rate'))} | "
            f"{s.get('rope_theta', 0):,.0f} | {fim if fim is not None else 'none'} | "
            f"{s.get('finished', '-')} |"
        )
    return "\n".join(lines)


def _training_data(facts: ModelFacts) -> str:
    parts = []
    for i, s in enumerate(facts.stages, 1):
        data = s.get("data") or {}
        head = f"**Stage {i} ({s['stage']})**: "
        if data.get("mixture"):
            head += f"mixture `{data['mixture']}`"
        else:
            head += "sources " + ", ".join(f"`{x}`" for x in data.get("sources") or [])
        extras = [
            f"{_fmt_int(data['documents'])} documents" if data.get("documents") is not None else None,
            f"{data['epochs']} epoch(s) of packing" if data.get("epochs") is not None else None,
            f"split `{data['split']}`" if data.get("split") else None,
        ]
        head += "".join(f"; {x}" for x in extras if x) + "."
        fim = data.get("fim")
        if fim:
            head += (
                f" Fill-in-the-middle on a share {fim['rate']:g} of the documents, of which a share "
                f"{fim['spm_rate']:g} in SPM order (the rest PSM)."
            )
        else:
            head += " No fill-in-the-middle."
        parts.append(head)
        weights = data.get("mixture_weights") or {}
        if weights:
            parts += ["", "| component | sampling weight | sources |", "|---|---|---|"]
            sources = data.get("mixture_sources") or {}
            for name, weight in weights.items():
                given = sources.get(name)
                given = given if isinstance(given, list) else [given] if given else []
                parts.append(f"| {name} | {weight:g} | {', '.join(f'`{x}`' for x in given) or 'default'} |")
        parts.append("")
    return "\n".join(parts).rstrip()


def _hardware(facts: ModelFacts) -> str:
    lines = [
        "| stage | processes | micro-batch | accumulation | runtime (s) | software |",
        "|---|---|---|---|---|---|",
    ]
    for s in facts.stages:
        plan, versions = s.get("plan") or {}, s.get("versions") or {}
        software = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        lines.append(
            f"| {s['stage']} | {plan.get('world_size', '-')} | {plan.get('micro_batch', '-')} | "
            f"{plan.get('grad_accum', '-')} | {s.get('train_runtime_s', '-')} | {software} |"
        )
    return "\n".join(lines)


def _evaluation(results: list[dict]) -> str:
    if not results:
        return "No evaluation results were given when this card was written."
    from codellama_hf.evaluation.report import table

    lines = [
        table(results),
        "",
        "| task | decoding | samples per problem | max new tokens | run |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        cfg = r.get("config") or {}
        decoding = (
            f"sampling T={cfg.get('temperature'):g}, top-p {cfg.get('top_p'):g}"
            if cfg.get("do_sample")
            else "greedy"
            if "do_sample" in cfg
            else "-"
        )
        lines.append(
            f"| {r['task']} | {decoding} | {cfg.get('n_samples', '-')} | {cfg.get('max_new_tokens', '-')} "
            f"| {r.get('created', '-')} |"
        )
    return "\n".join(lines)


def _family_table(family: dict) -> str:
    sizes = [s for s in ("7b", "13b", "34b", "tiny") if any(v.size == s for v in family)]
    lines = ["| | Base model | Python | Instruct |", "|---|---|---|---|"]
    for size in sizes:
        cells = []
        for kind in KINDS:
            repo = family.get(Variant(size, kind))
            cells.append(f"[{repo}](https://huggingface.co/{repo})" if repo else "-")
        lines.append(f"| {size.upper() if size != 'tiny' else 'tiny'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_card(facts: ModelFacts, results: list[dict], options: CardOptions):
    """The model card (huggingface_hub.ModelCard) for a model folder and its evaluation results."""
    from huggingface_hub import ModelCard, ModelCardData

    variant = options.variant
    name = (options.repo_id or facts.folder.name).rsplit("/", 1)[-1]
    title = variant.title if variant else "Code Llama-style model"
    stages = " → ".join(s["stage"] for s in facts.stages)
    llama2 = options.license == "llama2"
    metadata = ModelCardData(
        language=["code"],
        license=options.license,
        pipeline_tag="text-generation",
        library_name="transformers",
        tags=["llama-2", "code", "codellama", TOOLKIT, *(f"stage-{s['stage']}" for s in facts.stages)]
        + ([f"codellama-{variant.kind}"] if variant else []),
        base_model=_parent_repo(facts, options),
        datasets=hub_datasets(facts.stages) or None,
        model_name=name,
        eval_results=eval_results(results) or None,
    )
    sections = [
        f"# **{name}**",
        f"{title}, reproduced with [{TOOLKIT}](https://pypi.org/project/{TOOLKIT}/) following Meta's Code Llama "
        f"recipe ([paper]({PAPER})): {_fmt_int(facts.parameters)} parameters, trained in the stages "
        f"{stages}, starting from {_started_from(facts.stages[0], options)}.",
    ]
    if options.family:
        sections += ["The family published with it:", _family_table(options.family)]
    sections += [
        "## Model Use",
        "```bash\npip install transformers accelerate\n```",
        "Model capabilities:\n\n" + "\n".join(_capabilities(facts, variant)),
        _usage(facts, options.repo_id or str(facts.folder)),
        "## Model Details",
        (
            "*Note: use of this model is governed by the Llama 2 Community License.*"
            if llama2
            else f"*Note: use of this model is governed by its license ({options.license}).*"
        ),
        f"**Model Developers** {options.developer or 'the publisher of this repository'}, with {TOOLKIT}.",
        "**Variations** Code Llama comes as a general code model (Code Llama), a Python specialist (Code Llama - "
        "Python) and an instruction-following model (Code Llama - Instruct)."
        + (f" This repository contains {variant.title}." if variant else ""),
        "**Input** Models input text only.\n\n**Output** Models generate text only.",
        "**Model Architecture** An auto-regressive language model using an optimized transformer architecture "
        f"(Llama 2's).{' It supports infilling.' if facts.infilling else ' It does not support infilling.'}\n\n"
        + _architecture(facts),
        "**Training stages** (from `lineage.json`)\n\n" + _stage_table(facts, options),
        f"**Model Dates** Its stages finished between {facts.stages[0].get('finished', '?')} and "
        f"{facts.lineage.get('finished', '?')}.",
        "**Status** This is a static model trained on an offline dataset.",
        f"**Research Paper** [Code Llama: Open Foundation Models for Code]({PAPER}) (Rozière et al.).",
        "## Intended Use",
        "**Intended Use Cases** Commercial and research use in English and relevant programming languages. The base "
        "model can be adapted for code synthesis and understanding tasks, the Python variant is designed for "
        "Python, and the Instruct variant is intended to be safer to use as a code assistant.",
        "**Out-of-Scope Uses** Use in any manner that violates applicable laws or regulations (including trade "
        "compliance laws); use in languages other than English; use in any other way prohibited by the license "
        "and acceptable use policy of the model.",
        "## Hardware and Software",
        "**Training Factors** Trained with the Hugging Face stack through " + TOOLKIT + " (transformers Trainer, "
        "accelerate, DeepSpeed where configured):\n\n" + _hardware(facts),
        "**Carbon Footprint** Not measured; the runtimes above bound the compute used.",
        "## Training Data",
        _training_data(facts),
        "## Evaluation Results",
        _evaluation(results),
        "## Ethical Considerations and Limitations",
        "Code Llama and its variants are a new technology that carries risks with use. Testing conducted to date "
        "has been in English, and has not covered, nor could it cover all scenarios. The model's potential "
        "outputs cannot be predicted in advance, and it may produce inaccurate or objectionable responses to user "
        "prompts. Before deploying any application of this model, developers should perform safety testing and "
        "tuning tailored to their specific application. See Meta's "
        "[Responsible Use Guide](https://ai.meta.com/llama/responsible-use-guide).",
    ]
    content = f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    card = ModelCard(content)  # parses the header back: invalid metadata fails here, not on the Hub
    return card


def write_card(folder, results=None, options: CardOptions | None = None, *, out=None) -> Path:
    """Write README.md (default: into the model folder) and return its path."""
    facts = read_facts(folder)
    card = render_card(facts, read_results(results), options or CardOptions())
    return write_text(Path(out) if out else Path(folder) / "README.md", str(card))


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "card",
        help="write a model card (README.md) from a model's lineage and evaluation results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="model folder with lineage.json (a training stage's output)")
    parser.add_argument("--results", type=Path, nargs="*", default=[], help="evaluation results folder(s)")
    parser.add_argument("--variant", help="family slot: 7b, 7b-python, 13b-instruct, ... (default: from the name)")
    parser.add_argument("--repo-id", help="Hub repo the card is for (used in examples and the model-index)")
    parser.add_argument("--base-model", help="Hub id of the model it was trained from, for the metadata")
    parser.add_argument("--license", default="llama2", help="Hub license id (default llama2)")
    parser.add_argument("--out", type=Path, help="where to write (default MODEL/README.md)")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    variant = parse_slot(args.variant) if args.variant else variant_from_name(args.repo_id or args.model.name)
    options = CardOptions(repo_id=args.repo_id, variant=variant, base_model=args.base_model, license=args.license)
    path = write_card(args.model, args.results, options, out=args.out)
    print(f"wrote {path}")
    return 0

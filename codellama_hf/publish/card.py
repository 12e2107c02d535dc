"""Model cards: the facts of a model folder laid out by a template, through huggingface_hub's ModelCard.

The prose lives in templates/model_card.md (Jinja, rendered by `ModelCard.from_template`); this module only turns
the folder's facts (codellama_hf.publish.facts) and the evaluation results into the values and table rows the
template shows. The YAML header is huggingface_hub's `ModelCardData`, parsed back by `ModelCard`, so invalid
metadata fails here rather than on the Hub.

    codellama-hf card outputs/7b/lcft --results eval_results/lcft --variant 7b --repo-id me/CodeLlama-7b-hf
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from codellama_hf.family import KINDS, Variant
from codellama_hf.io import write_text
from codellama_hf.publish.facts import (
    PAPER,
    TOOLKIT,
    ModelFacts,
    eval_results,
    hub_datasets,
    read_facts,
    read_results,
)

TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"


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


def _int(n) -> str:
    return f"{int(n):,}"


def _float(x) -> str:
    return "-" if x is None else f"{x:g}"


def _short(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _hub_link(repo: str) -> str:
    return f"[{repo}](https://huggingface.co/{repo})"


def _started_from(stage: dict, options: CardOptions) -> str:
    base = stage["base_model"]
    if base.get("random_init"):
        return f"random {base['random_init']} initialisation (seed {base.get('seed')})"
    name = base.get("name_or_path") or "?"
    repo = options.published.get(str(Path(name).resolve())) if name != "?" else None
    return _hub_link(repo) if repo else f"`{name}`"


def _parent_repo(facts: ModelFacts, options: CardOptions) -> str | None:
    if options.base_model:
        return options.base_model
    for stage in reversed(facts.stages):
        name = stage["base_model"].get("name_or_path")
        if name and str(Path(name).resolve()) in options.published:
            return options.published[str(Path(name).resolve())]
    return None


def _method(stage: dict) -> str:
    """Full fine-tuning, or the LoRA settings merge_and_save recorded."""
    adapter = stage.get("adapter")
    if not adapter:
        return "full"
    lora = adapter.get("lora") or {}
    quantized = {"4bit": ", 4-bit base (QLoRA)", "8bit": ", 8-bit base"}.get(adapter.get("quantization"), "")
    return f"LoRA r={lora.get('r')}, alpha {lora.get('alpha')}{quantized}"


def _trained_rows(lora: dict) -> str:
    """Which embedding rows the adapter trained beside LoRA: new rows only, whole matrices, or none."""
    rows = lora.get("trained_rows") or {}
    if rows:
        spans = sorted({tuple(span) for span in rows.values()})
        where = ", ".join(sorted(rows)) + (" (tied with the output layer)" if lora.get("tied_embeddings") else "")
        return "; ".join(f"rows {a:,}-{b:,} ({b - a + 1} new)" for a, b in spans) + f" of {where}"
    whole = lora.get("modules_to_save") or []
    return f"all rows of {', '.join(whole)}" if whole else "none (no embedding rows)"


def _adapter_rows(facts: ModelFacts) -> list[tuple]:
    """Per LoRA stage: what the adapter holds and its size on disk (adapter_model.safetensors, from merge_and_save)."""
    rows = []
    for s in facts.stages:
        adapter = s.get("adapter")
        if not adapter:
            continue
        lora = adapter.get("lora") or {}
        size = adapter.get("size_bytes")
        rows.append(
            (
                s["stage"],
                _method(s),
                ", ".join(lora.get("target_modules") or []) or "-",
                _trained_rows(lora),
                f"{_int(size)} bytes ({_short_bytes(size)})" if size is not None else "not recorded",
            )
        )
    return rows


def _short_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _architecture(facts: ModelFacts) -> list[tuple]:
    c = facts.config
    return [
        ("Parameters", f"{_int(facts.parameters)} ({_short(facts.parameters)})"),
        ("Layers", c.get("num_hidden_layers")),
        ("Hidden size", c.get("hidden_size")),
        ("FFN size", c.get("intermediate_size")),
        ("Attention heads", c.get("num_attention_heads")),
        ("Key-value heads", c.get("num_key_value_heads", c.get("num_attention_heads"))),
        ("Vocabulary", _int(c.get("vocab_size", 0))),
        ("RoPE theta", f"{facts.theta:,.0f}"),
        ("Max positions", _int(c.get("max_position_embeddings", 0))),
        ("Weights dtype", facts.dtype),
    ]


def _stage_rows(facts: ModelFacts, options: CardOptions) -> list[tuple]:
    rows = []
    for i, s in enumerate(facts.stages, 1):
        data, hp, plan = s.get("data") or {}, s.get("hyperparameters") or {}, s.get("plan") or {}
        fim = (data.get("fim") or {}).get("rate")
        rows.append(
            (
                i,
                s["stage"],
                _started_from(s, options),
                _method(s),
                _int(s.get("tokens_seen", 0)),
                _int(s.get("steps", 0)),
                _int(plan.get("tokens_per_step", 0)),
                _int(plan.get("seq_len", data.get("seq_len", 0))),
                _float(hp.get("learning_rate")),
                f"{s.get('rope_theta', 0):,.0f}",
                fim if fim is not None else "none",
                s.get("finished", "-"),
            )
        )
    return rows


def _training_eval_rows(facts: ModelFacts) -> list[tuple]:
    """Quick evaluations run during each stage (lineage `evaluations_during_training`), one row per metric."""
    rows = []
    for s in facts.stages:
        for record in (s.get("evaluations_during_training") or {}).get("history", []):
            for metric, value in sorted(record.get("metrics", {}).items()):
                rows.append((s["stage"], record["step"], metric, _float(value)))
    return rows


def _data_stages(facts: ModelFacts) -> list[dict]:
    """Per stage: one sentence on its data, and its mixture as table rows."""
    out = []
    for s in facts.stages:
        data = s.get("data") or {}
        if data.get("mixture"):
            summary = f"mixture `{data['mixture']}`"
        else:
            summary = "sources " + ", ".join(f"`{x}`" for x in data.get("sources") or [])
        extras = [
            f"{_int(data['documents'])} documents" if data.get("documents") is not None else None,
            f"{data['epochs']} epoch(s) of packing" if data.get("epochs") is not None else None,
            f"split `{data['split']}`" if data.get("split") else None,
        ]
        summary += "".join(f"; {x}" for x in extras if x) + "."
        fim = data.get("fim")
        if fim:
            which = "documents"
            if fim.get("components") is not None:  # the instruct stage: code rehearsal only, never the dialogs
                which = f"code rehearsal documents ({', '.join(fim['components'])}; dialogs never)"
            summary += (
                f" Fill-in-the-middle on a share {fim['rate']:g} of the {which}, of which a share "
                f"{fim['spm_rate']:g} in SPM order (the rest PSM)."
            )
        else:
            summary += " No fill-in-the-middle."
        sources = data.get("mixture_sources") or {}
        mixture = []
        for name, weight in (data.get("mixture_weights") or {}).items():
            given = sources.get(name)
            given = given if isinstance(given, list) else [given] if given else []
            mixture.append((name, f"{weight:g}", ", ".join(f"`{x}`" for x in given) or "default"))
        out.append({"name": s["stage"], "summary": summary, "mixture": mixture})
    return out


def _hardware_rows(facts: ModelFacts) -> list[tuple]:
    rows = []
    for s in facts.stages:
        plan, versions = s.get("plan") or {}, s.get("versions") or {}
        software = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        rows.append(
            (
                s["stage"],
                plan.get("world_size", "-"),
                plan.get("micro_batch", "-"),
                plan.get("grad_accum", "-"),
                s.get("train_runtime_s", "-"),
                software,
            )
        )
    return rows


def _evaluation_rows(results: list[dict]) -> list[tuple]:
    """How each result was produced: decoding, samples, token cap, prompt protocol (form and style), run time."""
    from codellama_hf.evaluation.report import prompt_protocol

    rows = []
    for r in results:
        cfg = r.get("config") or {}
        if cfg.get("do_sample"):
            decoding = f"sampling T={cfg.get('temperature'):g}, top-p {cfg.get('top_p'):g}"
        else:
            decoding = "greedy" if "do_sample" in cfg else "-"
        rows.append(
            (
                r["task"],
                decoding,
                cfg.get("n_samples", "-"),
                cfg.get("max_new_tokens", "-"),
                prompt_protocol(r) or "-",
                r.get("created", "-"),
            )
        )
    return rows


def _family_rows(family: dict) -> list[tuple]:
    sizes = [s for s in ("7b", "13b", "34b", "tiny") if any(v.size == s for v in family)]
    rows = []
    for size in sizes:
        cells = [family.get(Variant(size, kind)) for kind in KINDS]
        rows.append((size.upper() if size != "tiny" else "tiny", *(_hub_link(r) if r else "-" for r in cells)))
    return rows


def lineage_note(facts: ModelFacts, variant: Variant | None) -> str | None:
    """How this model's stages compare with the paper's lineage for its family member (family.Variant.lineage).

    The one difference that changes what the model is: a Python model trained with FIM or carrying the infilling
    pieces, which the paper's Code Llama - Python never has (paper §2.3).
    """
    if variant is None:
        return None
    fim_stages = [s["stage"] for s in facts.stages if (s.get("data") or {}).get("fim")]
    if variant.kind == "python" and (facts.infilling or fim_stages):
        what = f"FIM training in {', '.join(fim_stages)}" if fim_stages else "the infilling pieces"
        return (
            f"This model differs from the paper's {variant.title}: it has {what}, which the paper's Python models "
            "do not (they branch from a code stage without infilling)."
        )
    return f"The paper's lineage for {variant.title}: {variant.lineage_text}."


def render_card(facts: ModelFacts, results: list[dict], options: CardOptions):
    """The model card (huggingface_hub.ModelCard) for a model folder and its evaluation results."""
    from huggingface_hub import ModelCard, ModelCardData

    variant = options.variant
    metadata = ModelCardData(
        language=["code"],
        license=options.license,
        pipeline_tag="text-generation",
        library_name="transformers",
        tags=["llama-2", "code", "codellama", TOOLKIT, *(f"stage-{s['stage']}" for s in facts.stages)]
        + ([f"codellama-{variant.kind}"] if variant else []),
        base_model=_parent_repo(facts, options),
        datasets=hub_datasets(facts.stages) or None,
        model_name=(options.repo_id or facts.folder.name).rsplit("/", 1)[-1],
        eval_results=eval_results(results) or None,
    )
    results_table = note = ""
    if results:
        from codellama_hf.evaluation.report import table
        from codellama_hf.evaluation.sandbox import sandbox_note

        results_table, note = table(results), sandbox_note(results)
    prefix, suffix = 'def remove_non_ascii(s: str) -> str:\n    """ ', "\n    return result\n"
    return ModelCard.from_template(
        metadata,
        template_path=TEMPLATE,
        name=metadata.model_name,
        title=variant.title if variant else "Code Llama-style model",
        variant_title=variant.title if variant else None,
        toolkit=TOOLKIT,
        paper=PAPER,
        parameters=_int(facts.parameters),
        stages=[s["stage"] for s in facts.stages],
        started_from=_started_from(facts.stages[0], options),
        lineage_note=lineage_note(facts, variant),
        family_rows=_family_rows(options.family),
        capabilities=[
            ("Code completion", True),
            ("Infilling", facts.infilling),
            ("Instructions / chat", facts.chat),
            ("Python specialist", variant is not None and variant.kind == "python"),
        ],
        model_ref=options.repo_id or str(facts.folder),
        infilling=facts.infilling,
        fim_tokens=", ".join(f"`{piece}` = {i}" for piece, i in facts.fim_ids.items()),
        bpe_fim=bool(facts.fim_ids) and "<PRE>" in facts.fim_ids,
        infill_example=f"{prefix!r}, {suffix!r}",
        chat=facts.chat,
        developer=options.developer or "the publisher of this repository",
        architecture=_architecture(facts),
        stage_rows=_stage_rows(facts, options),
        adapter_rows=_adapter_rows(facts),
        first_finished=facts.stages[0].get("finished", "?"),
        last_finished=facts.lineage.get("finished", "?"),
        hardware_rows=_hardware_rows(facts),
        data_stages=_data_stages(facts),
        results_table=results_table,
        evaluation_rows=_evaluation_rows(results),
        training_eval_rows=_training_eval_rows(facts),
        sandbox_note=note,
    )


def write_card(folder: str | os.PathLike, results=None, options: CardOptions | None = None, *, out=None) -> Path:
    """Write README.md (default: into the model folder) and return its path."""
    facts = read_facts(folder)
    card = render_card(facts, read_results(results), options or CardOptions())
    return write_text(Path(out) if out else Path(folder) / "README.md", str(card))

"""What a model card states, read from the model folder, never typed by hand.

Every figure comes from the folder's config.json (architecture, theta, context), its safetensors headers (parameter
count, dtype), its tokenizer files (infilling pieces, chat template) and its lineage.json (each training stage back
to the first: data mixture, tokens, steps, hyperparameters, versions), plus the evaluation results JSON written by
codellama_hf.evaluation (schema codellama_hf.eval/1), which become the Hub's model-index.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from codellama_hf.io import read_json_object
from codellama_hf.tokenizer import BPE_SENTINELS, SENTINELS

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


# Facts about a model folder


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


def _tokenizer_facts(folder: Path, vocab_rows: int) -> tuple[dict, bool]:
    """({sentinel: id} of the infilling pieces within the embedding rows, or {}; chat template present).

    Code Llama's SentencePiece pieces (▁<PRE> 32007 ...) or, on a byte-level BPE base, the FIM tokens
    `codellama-hf tokenizer --add-fim` appends (<PRE> <SUF> <MID> <EOT>; SmolLM2 49152-49155)."""
    spec = read_json_object(folder / "tokenizer.json", "the tokenizer")
    ids = dict(spec.get("model", {}).get("vocab", {}))
    ids.update({t["content"]: t["id"] for t in spec.get("added_tokens", [])})
    fim = {}
    for names in (SENTINELS, BPE_SENTINELS):
        if all(piece in ids and ids[piece] < vocab_rows for piece in names):
            fim = {piece: ids[piece] for piece in names}
            break
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = read_json_object(config_path, "the tokenizer") if config_path.is_file() else {}
    chat = bool(tokenizer_config.get("chat_template")) or (folder / "chat_template.jinja").is_file()
    return fim, chat


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
    fim_ids: dict = field(default_factory=dict)  # sentinel -> id, empty without infilling

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
    fim_ids, chat = _tokenizer_facts(folder, config.get("vocab_size", 0))
    stages = lineage_chain(read_json_object(lineage_path, "the model lineage"), lineage_path)
    return ModelFacts(folder, config, parameters, dtype, bool(fim_ids), chat, stages, fim_ids)


def read_results(folders) -> list[dict]:
    """Evaluation results (codellama_hf.eval/1) from one or more folders, one per task (a later folder wins)."""
    from codellama_hf.evaluation.report import load_results

    by_task = {}
    for folder in [folders] if isinstance(folders, (str, os.PathLike)) else list(folders or []):
        for result in load_results(folder):
            by_task[result["task"]] = result
    return [by_task[task] for task in sorted(by_task)]


# Metadata


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

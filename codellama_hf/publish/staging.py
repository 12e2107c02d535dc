"""Push configuration and staging: each family member's repository assembled locally before anything is sent.

A staged repository holds the model's files (hard links, so nothing is copied), config.json with both rope keys,
README.md written by codellama_hf.publish.card, and the evaluation results under evaluation/; it is exactly what
the Hub repository will hold and loads with plain transformers.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

from codellama_hf.family import Variant, parse_slot
from codellama_hf.io import atomic_dir, read_yaml_mapping

logger = logging.getLogger(__name__)

PLAN_FILE = "push-plan.json"
HASH_CACHE = ".hashes.json"
# What a published model folder holds (everything else in a stage's output, like checkpoints, stays home).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "lineage.json",
    "training_curves.png",
)
RESULT_FILES = ("*.json", "report.md", "*.png")
KEEP_REMOTE = (".gitattributes",)


# Configuration


@dataclass
class Member:
    """One model of the family: its slot (7b, 7b-python, ...), folder, results and Hub parent."""

    slot: str
    path: Path
    results: list[Path] = field(default_factory=list)
    base_model: str | None = None

    def __post_init__(self):
        self.variant: Variant = parse_slot(self.slot)
        self.path = Path(self.path).expanduser()
        self.results = [Path(p).expanduser() for p in self.results]


@dataclass
class PushConfig:
    """A family push. In YAML, `models` maps slots to a folder or to {path, results, base_model}."""

    models: list[Member] = field(default_factory=list)
    namespace: str | None = None  # user or organisation; default: the token's user
    repo_template: str = "{name}-hf"  # {name} = CodeLlama-7b-Python; also {size} and {kind}
    collection: str | None = "Code Llama (codellama_hf)"  # title; None: no collection
    collection_description: str | None = "Code Llama models reproduced with codellama_hf"
    private: bool = False
    license: str = "llama2"
    revision: str = "main"
    stage_dir: Path = Path("push_staging")
    delete_stale: bool = False  # also delete remote files the staged repo does not have
    dry_run: bool = False
    endpoint: str | None = None  # default: HF_ENDPOINT or https://huggingface.co
    commit_message: str = "Upload {name} with codellama_hf"

    def __post_init__(self):
        self.stage_dir = Path(self.stage_dir).expanduser()
        slots = [m.variant for m in self.models]
        duplicates = sorted({v.slot for v in slots if slots.count(v) > 1})
        if duplicates:
            raise ValueError(f"family slot(s) {duplicates} given twice; each member is one repository")
        for member in self.models:
            if not member.path.is_dir():
                raise FileNotFoundError(f"model {member.slot}: {member.path} is not a folder")
            for folder in member.results:
                if not folder.is_dir():
                    raise FileNotFoundError(f"model {member.slot}: results folder {folder} not found")

    def repo_name(self, variant: Variant) -> str:
        return self.repo_template.format(name=variant.name, size=variant.size, kind=variant.kind)


def _members(spec, where: str) -> list[Member]:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: 'models' must map family slots (7b, 7b-python, ...) to model folders")
    members = []
    for slot, value in spec.items():
        if isinstance(value, (str, os.PathLike)):
            value = {"path": value}
        if not isinstance(value, dict) or "path" not in value:
            raise ValueError(f"{where}: models.{slot} must be a folder or a mapping with 'path'")
        unknown = set(value) - {"path", "results", "base_model"}
        if unknown:
            raise ValueError(
                f"{where}: models.{slot} has unknown key(s) {sorted(unknown)}; known: path, results, base_model"
            )
        results = value.get("results") or []
        members.append(
            Member(
                str(slot), value["path"], [results] if isinstance(results, str) else results, value.get("base_model")
            )
        )
    return members


def read_push_config(
    path: str | os.PathLike | None, *, models=(), results=None, base_models=None, **overrides
) -> PushConfig:
    """PushConfig from a YAML file (optional) and command-line values, which win; unknown keys are errors.

    models: Members added to (or replacing) the file's; results / base_models: {slot: value} for any member.
    """
    where = str(path) if path else "push options"
    data = read_yaml_mapping(path, "push config") if path is not None else {}
    known = {f.name for f in fields(PushConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    by_variant = {m.variant: m for m in [*_members(data.pop("models", None) or {}, where), *models]}
    for flag, values in (("--results", results or {}), ("--base-model", base_models or {})):
        for slot, value in values.items():
            member = by_variant.get(parse_slot(slot))
            if member is None:
                raise ValueError(f"{flag} {slot}={value}: {slot} is not one of the models to push")
            if flag == "--results":
                member.results.append(Path(value).expanduser())
            else:
                member.base_model = value
    data.update({k: v for k, v in overrides.items() if v is not None})
    if not by_variant:
        raise ValueError(f"{where}: no models to push; give `models:` in the config or --model SLOT=FOLDER")
    return PushConfig(models=list(by_variant.values()), **data)


# 1. Staging


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def _matching(folder: Path, patterns) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})


def stage_repo(member: Member, repo_dir: Path, card_options) -> Path:
    """Build `repo_dir`: the model's files, config with both rope keys, README.md and evaluation/ (atomically)."""
    from codellama_hf.export.model_folder import complete_model_folder
    from codellama_hf.publish.card import render_card
    from codellama_hf.publish.facts import read_facts, read_results

    facts = read_facts(member.path)  # checks config, weights, tokenizer and lineage before anything is written
    if card_options.variant.vocab_size and facts.config.get("vocab_size") != card_options.variant.vocab_size:
        logger.warning(
            "%s: %s has vocabulary %s, but Meta's %s has %s",
            member.slot,
            member.path,
            facts.config.get("vocab_size"),
            card_options.variant.name,
            card_options.variant.vocab_size,
        )
    if card_options.variant.infilling != facts.infilling:
        logger.warning(
            "%s: %s %s infill, unlike Meta's %s",
            member.slot,
            member.path,
            "can" if facts.infilling else "cannot",
            card_options.variant.name,
        )
    results = read_results(member.results)
    with atomic_dir(repo_dir, overwrite=True) as tmp:  # staging is rebuilt on every run
        for source in _matching(member.path, MODEL_FILES):
            if source.name == "config.json":
                shutil.copyfile(source, tmp / source.name)  # rewritten below: never touch the original
            else:
                _link_or_copy(source, tmp / source.name)
        complete_model_folder(tmp)  # both rope keys, 4.x-readable tokenizer files, stop ids (links are replaced)
        for folder in member.results:
            for source in _matching(folder, RESULT_FILES):
                _link_or_copy(source, tmp / "evaluation" / source.name)
        (tmp / "README.md").write_text(str(render_card(facts, results, card_options)))
    return repo_dir

"""Shared by the cards tests: fixtures and helpers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers import built_once

CODE_DATA = {
    "mixture": "code",
    "mixture_weights": {"code": 0.85, "nl_code": 0.08, "nl": 0.07},
    "documents": 120,
    "fim": {"rate": 0.9, "spm_rate": 0.5, "seed": 3},
}

PYTHON_DATA = {
    "mixture": "python",
    "mixture_weights": {"python": 0.75, "code": 0.25},
    "fim": None,
    "mixture_sources": {"python": [{"dataset": "bigcode/the-stack-smol"}]},
}

FAMILY_STAGES = {  # slot -> (stage, parent slot, theta, tokenizer, data description)
    "tiny": ("code", None, 1e4, "infill", CODE_DATA),
    "tiny-python": ("python", "tiny", 1e4, "infill", PYTHON_DATA),
    "tiny-instruct": ("lcft", "tiny", 1e6, "chat", {"sources": ["/data/instructions"], "fim": None}),
}


def train_stage(
    out: Path,
    *,
    stage: str,
    base: Path | None,
    tokenizer_dir: Path,
    theta: float,
    data: dict,
    seed: int,
    steps: int = 2,
) -> Path:
    """A real tiny stage: Trainer steps on token rows, then training.lineage_record and training.save_final."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, Trainer, default_data_collator

    from codellama_hf.models import llama_config, set_rope_theta
    from codellama_hf.training.config import StageConfig
    from codellama_hf.training.lineage import lineage_record, read_lineage, save_final

    config = StageConfig(
        stage=stage,
        output_dir=str(out),
        max_steps=steps,
        tokens_per_step=64,
        seq_len=32,
        per_device_train_batch_size=2,
        warmup_steps=0,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=seed,
        use_cpu=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    if base is None:
        model = LlamaForCausalLM(llama_config("tiny", vocab_size=len(tokenizer), theta=theta, intermediate_size=384))
        origin = {"name_or_path": None, "random_init": "tiny", "seed": seed, "lineage": None}
    else:
        model = AutoModelForCausalLM.from_pretrained(base)
        set_rope_theta(model.config, theta)
        origin = {"name_or_path": str(base), "random_init": None, "lineage": read_lineage(base)}
    origin["tokenizer"] = str(tokenizer_dir)
    rows = torch.randint(3, len(tokenizer), (2 * steps, 32), generator=torch.Generator().manual_seed(seed))
    dataset = datasets.Dataset.from_dict({"input_ids": rows.tolist(), "labels": rows.tolist()})
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    started = time.time()
    trainer.train()
    lineage = lineage_record(
        config=config,
        base=origin,
        data_info={**data, "seq_len": 32},
        model=trainer.model,
        tokenizer=tokenizer,
        trainer=trainer,
        runtime=time.time() - started,
    )
    return save_final(trainer, lineage)


def tiny_family(tmp_path_factory) -> dict[str, Path]:
    """Three stage outputs (base -> python, base -> 'instruct'), built once per test session."""
    from codellama_hf.chat import CHAT_TEMPLATE
    from codellama_hf.tokenizer import build_tiny_tokenizer, load_sp_model, save_tokenizer

    def build(root: Path) -> None:
        tokenizers = {"infill": build_tiny_tokenizer(root / "tok-infill")}
        tokenizers["chat"] = save_tokenizer(
            load_sp_model(tokenizers["infill"] / "tokenizer.model"), root / "tok-chat", chat_template=CHAT_TEMPLATE
        )
        for seed, (slot, (stage, parent, theta, tok, data)) in enumerate(FAMILY_STAGES.items(), 1):
            train_stage(
                root / slot,
                stage=stage,
                base=root / parent if parent else None,
                tokenizer_dir=tokenizers[tok],
                theta=theta,
                data=data,
                seed=seed,
            )

    root = built_once(tmp_path_factory, "tiny_family", build)
    return {slot: root / slot for slot in FAMILY_STAGES}


def write_results(folder: Path, model_dir: Path, *, pass_at_1: float, subset_of: int | None = None) -> Path:
    """Results JSON through the evaluation engineer's writer, plus a real perplexity run on the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.evaluation.report import new_result, write_result
    from codellama_hf.evaluation.runner import evaluate_perplexity

    total = 164
    write_result(
        folder,
        new_result(
            "humaneval",
            str(model_dir),
            metrics={"pass@1": pass_at_1},
            num_problems=subset_of or total,
            total_problems=total,
            num_samples=total,
            config={
                "n_samples": 1,
                "do_sample": False,
                "temperature": 0.0,
                "top_p": 0.95,
                "max_new_tokens": 512,
                "prompt": {"form": "strip", "style": "completion"},
            },
        ),
    )
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    source = Path(json.__file__)  # a real Python file from the standard library
    evaluate_perplexity(
        model, tokenizer, str(model_dir), folder, lengths=[16, 32], files=[source], max_tokens_per_file=64
    )
    return folder


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return tiny_family(tmp_path_factory)


@pytest.fixture(scope="module")
def results(family, tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("results"), family["tiny"], pass_at_1=0.3125)


def _card(folder, results=None, **options):
    from codellama_hf.publish.card import CardOptions, render_card
    from codellama_hf.publish.facts import read_facts, read_results

    return render_card(read_facts(folder), read_results(results), CardOptions(**options))

"""Evaluation during training: the callback's numbers equal the standalone evaluation of the saved checkpoint, and
a failing evaluation is counted while training goes on."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from codellama_hf.evaluation.crossfile import build_tasks, middle_loss
from codellama_hf.evaluation.during_training import (
    RESULTS_FILE,
    QuickEvalCallback,
    QuickEvalConfig,
    QuickEvaluations,
    lockstep_greedy,
)
from tests.helpers.crossfile import REPORT, SHAPES, two_file_package


@pytest.fixture
def repo(tmp_path):
    return two_file_package(tmp_path / "pkg")


class _Rows(torch.utils.data.Dataset):
    def __init__(self, tokenizer, text: str, n: int, length: int = 64):
        ids = tokenizer(text * 20)["input_ids"]
        self.rows = [torch.tensor(ids[i : i + length]) for i in range(0, n * 7, 7)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def test_callback_equals_standalone_evaluation_of_the_checkpoint(tmp_path, repo, tiny_tokenizer, caplog):
    from transformers import LlamaForCausalLM

    from codellama_hf.models import llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", vocab_size=len(tiny_tokenizer)))
    text_file = tmp_path / "long.py"
    text_file.write_text(SHAPES * 6 + REPORT * 6)
    config = QuickEvalConfig(
        every_steps=2,
        evaluations=("infilling", "perplexity"),
        repositories=(str(repo),),
        context_tokens=256,
        max_new_tokens=4,
        perplexity_files=(str(text_file),),
        perplexity_lengths=(16, 64),
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(tiny_tokenizer, SHAPES, 8))
    callback = QuickEvalCallback(tiny_tokenizer, config).attach(trainer)
    trainer.train()
    assert [h["step"] for h in callback.history] == [2, 3]  # every 2 steps and at the end
    first, last = callback.history[0]["metrics"], callback.history[-1]["metrics"]
    assert set(last) == {
        "infill_exact_match_with_context",
        "infill_exact_match_without_context",
        "infill_middle_loss_with_context",
        "infill_middle_loss_without_context",
        "perplexity@16",
        "perplexity@64",
    }
    assert first != last  # the current weights, not the starting ones
    saved = tmp_path / "checkpoint"
    trainer.save_model(saved)
    reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    standalone, failures = QuickEvaluations(tiny_tokenizer, config)(reloaded)
    assert not failures
    assert standalone == pytest.approx(last, rel=1e-5)
    # the infilling loss is evaluation/crossfile.py's middle loss of the same tasks
    tasks, _ = build_tasks([repo], tiny_tokenizer, per_repository=8, context_tokens=256)
    losses = [middle_loss(reloaded, tiny_tokenizer, *t.prompt(True)[:1], t.middle, t.suffix) for t in tasks]
    assert last["infill_middle_loss_with_context"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    written = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert written["history"] == json.loads(json.dumps(callback.history))
    logged = [e for e in trainer.state.log_history if "quick_eval/perplexity@16" in e]
    assert [e["step"] for e in logged] == [2, 3]
    assert list(tmp_path.rglob("events.out.tfevents.*"))


def test_a_failing_evaluation_is_counted_and_training_continues(tmp_path, tiny_tokenizer, caplog):
    from transformers import LlamaForCausalLM

    from codellama_hf.models import llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", vocab_size=len(tiny_tokenizer)))
    short = tmp_path / "short.py"
    short.write_text("x = 1\n")
    config = QuickEvalConfig(every_steps=1, evaluations=("perplexity",), perplexity_files=(str(short),))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(tiny_tokenizer, SHAPES, 4))
    callback = QuickEvalCallback(tiny_tokenizer, config).attach(trainer)
    trainer.train()
    assert trainer.state.global_step == 2
    assert callback.failures == {"perplexity": 2}
    assert "quick evaluation 'perplexity' failed" in caplog.text and "no text has" in caplog.text
    assert [e["quick_eval/failures"] for e in trainer.state.log_history if "quick_eval/failures" in e] == [1.0, 2.0]
    with pytest.raises(ValueError, match="unknown quick evaluations"):
        QuickEvalConfig(evaluations=("mmlu",))


def test_lockstep_greedy_equals_generate(tiny_tokenizer):
    from transformers import LlamaForCausalLM

    from codellama_hf.models import llama_config

    torch.manual_seed(1)
    model = LlamaForCausalLM(llama_config("tiny", vocab_size=len(tiny_tokenizer))).eval()
    prompt = tiny_tokenizer("def area(points):\n")["input_ids"]
    ours = lockstep_greedy(model, prompt, 12, set())
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert ours == theirs[0, len(prompt) :].tolist()
    stop_at = ours[3]
    assert lockstep_greedy(model, prompt, 12, {stop_at}) == ours[: ours.index(stop_at)]


def test_humaneval_subset_runs_in_the_sandbox_only_when_allowed(tiny_tokenizer):
    from transformers import LlamaForCausalLM

    from codellama_hf.models import llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", vocab_size=len(tiny_tokenizer))).eval()
    settings = dict(evaluations=("humaneval",), humaneval_problems=2, humaneval_max_new_tokens=4)
    metrics, failures = QuickEvaluations(tiny_tokenizer, QuickEvalConfig(**settings, allow_code_execution=True))(model)
    assert not failures and metrics == {"humaneval_pass@1": 0.0}  # a random model's 4 tokens pass nothing
    assert QuickEvaluations(tiny_tokenizer, QuickEvalConfig(**settings))(model) == ({}, {})


def test_options_from_the_recipe_are_checked():
    config = QuickEvalConfig.from_options(
        '{"infilling_tasks": 2, "perplexity_lengths": [64]}', every_steps=5, evaluations=("perplexity",)
    )
    assert (config.infilling_tasks, config.perplexity_lengths, config.every_steps) == (2, (64,), 5)
    assert QuickEvalConfig.from_options(None, every_steps=1).infilling_tasks == QuickEvalConfig().infilling_tasks
    with pytest.raises(ValueError, match=r"unknown fields \['infiling_tasks'\]"):
        QuickEvalConfig.from_options({"infiling_tasks": 2})
    with pytest.raises(ValueError, match=r"sets \['every_steps'\]"):
        QuickEvalConfig.from_options({"every_steps": 2}, every_steps=1)
    with pytest.raises(ValueError, match="not JSON"):
        QuickEvalConfig.from_options("{infilling_tasks: 2}")


def test_infilling_is_skipped_not_failed_without_the_pieces(repo, llama2_dir):
    """Llama 2's tokenizer (the Python branch's) has no infilling pieces: nothing to evaluate, nothing failed."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from codellama_hf.models import llama_config

    tokenizer = AutoTokenizer.from_pretrained(llama2_dir)
    model = LlamaForCausalLM(llama_config("tiny", vocab_size=len(tokenizer))).eval()
    config = QuickEvalConfig(evaluations=("infilling",), repositories=(str(repo),))
    assert QuickEvaluations(tokenizer, config)(model) == ({}, {})


def test_a_resumed_run_keeps_the_evaluations_before_its_checkpoint(tmp_path, tiny_tokenizer):
    from transformers import TrainerControl, TrainerState

    from codellama_hf.io import write_json

    earlier = {
        "config": {},
        "history": [{"step": s, "metrics": {"perplexity@16": 10.0 - s}, "failures": {}} for s in (2, 4, 6)],
        "failures": {"infilling": 1},
    }
    write_json(tmp_path / RESULTS_FILE, earlier)
    callback = QuickEvalCallback(tiny_tokenizer, QuickEvalConfig(every_steps=2))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    callback.on_train_begin(args, TrainerState(global_step=4), TrainerControl())
    assert [h["step"] for h in callback.history] == [2, 4] and callback.failures == {"infilling": 1}
    # a resume at the final checkpoint trains nothing more: train end must not add step 4 a second time
    callback.on_train_end(args, TrainerState(global_step=4), TrainerControl(), model=None)
    assert [h["step"] for h in callback.history] == [2, 4]
    fresh = QuickEvalCallback(tiny_tokenizer, QuickEvalConfig(every_steps=2))
    fresh.on_train_begin(args, TrainerState(global_step=0), TrainerControl())
    assert fresh.history == []  # a run from the start begins a new curve

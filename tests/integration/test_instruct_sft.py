"""The instruct stage: a real tiny fine-tuning run (chat template, FIM on the code rehearsal in the lineage), and a
32,000-piece model asked for instruct_fim_rate stopping before training."""

import json
import os
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from codellama_hf import chat
from tests.helpers import ROOT
from tests.helpers.instruct_sft import GOOD


@pytest.mark.slow
def test_tiny_instruct_run_learns_and_saves_the_chat_template(tmp_path):
    """`accelerate launch recipes/instruct.py` (tiny, shortened): the loss falls; the tokenizer has the template."""
    out = tmp_path / "instruct"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [
        "--output_dir",
        str(out),
        "--model_name_or_path",
        str(tmp_path / "no-lcft-yet"),
        "--max_steps",
        "10",
        "--seq_len",
        "256",
        "--tokens_per_step",
        "1024",
        "--learning_rate",
        "3e-3",
        "--warmup_steps",
        "1",
        "--logging_steps",
        "1",
        "--save_steps",
        "5",
        "--report_to",
        "none",
        "--packing_buffer",
        "32",
    ]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
    done = subprocess.run(
        [*launch, str(ROOT / "recipes" / "instruct.py"), *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) == 10 and losses[-1] < losses[0] - 1.0, losses
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stage"] == "instruct" and lineage["plan"]["tokens_per_step"] == 1024
    assert lineage["data"]["mixture_weights"] == {"instruct": 0.92, "code": 0.06, "nl": 0.02}
    # the tiny recipe's FIM on the code rehearsal (instruct_fim_rate), recorded with what it applies to
    assert lineage["data"]["fim"] == {"rate": 0.9, "spm_rate": 0.5, "seed": 42, "components": ["code"]}
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == chat.CHAT_TEMPLATE
    dialog = GOOD[1] + [{"role": "user", "content": "And a copy?"}]
    assert tokenizer.apply_chat_template(dialog)["input_ids"] == chat.prompt_ids(tokenizer, dialog)
    assert (out / "checkpoint-10").is_dir() and (out / "model.safetensors").is_file()


def test_a_32000_piece_model_with_the_rate_stops_before_training(llama2_dir, tiny_model_factory, tmp_path):
    """`recipes/instruct.py` on a model with Llama 2's own 32,000 pieces (a 34B/Python vocabulary) and
    instruct_fim_rate set: one line naming the field, exit 2, nothing trained or saved."""
    model = tmp_path / "python-like"
    tiny_model_factory(32000).save_pretrained(model)
    AutoTokenizer.from_pretrained(llama2_dir).save_pretrained(model)
    out = tmp_path / "instruct"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = ["--model_name_or_path", str(model), "--output_dir", str(out), "--instruct_fim_rate", "0.9"]
    argv += ["--max_steps", "2", "--seq_len", "128", "--tokens_per_step", "256", "--report_to", "none"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "instruct.py"), *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 2, said[-3000:]
    assert "instruct_fim_rate=0.9 needs a tokenizer with the infilling pieces" in said and "Traceback" not in said
    assert not any(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()

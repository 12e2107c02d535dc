"""Speed options of a stage: sequence-parallel batch plan and row sharding, Liger refused on CPU, torch.compile."""

from __future__ import annotations

import pytest
import torch

from codellama_hf.data.packing import IGNORE_INDEX, PackedCollator
from codellama_hf.parallel import check_sequence_parallel, shard_row
from codellama_hf.training import run_stage
from codellama_hf.training.batch_plan import batch_plan
from codellama_hf.training.config import config_path, parse_stage_config

LCFT = config_path("lcft")


def test_sequence_parallel_plan_counts_replicas_and_keeps_tokens_per_step():
    plain = batch_plan(tokens_per_step=2**21, seq_len=16384, micro_batch=1, world_size=64, max_steps=10)
    sp = batch_plan(
        tokens_per_step=2**21, seq_len=16384, micro_batch=1, world_size=64, sequence_parallel=4, max_steps=10
    )
    assert (plain.data_parallel, sp.data_parallel) == (64, 16)
    assert sp.grad_accum == 4 * plain.grad_accum == 8
    assert sp.tokens_per_step == plain.tokens_per_step == 2**21
    assert "16 data-parallel replicas (64 processes / sequence parallel 4)" in sp.describe()
    with pytest.raises(ValueError, match="sequence_parallel_size=3 must be a positive divisor of the 64"):
        batch_plan(
            tokens_per_step=2**21, seq_len=16384, micro_batch=1, world_size=64, sequence_parallel=3, max_steps=1
        )


def test_stage_config_plans_with_sequence_parallel_size():
    argv = ["--config", str(LCFT), "--plan_only", "--plan_world_size", "4", "--sequence_parallel_size", "2"]
    _, _, config = parse_stage_config("lcft", argv)
    assert config.plan.data_parallel == 2 and config.plan.sequence_parallel == 2
    assert config.gradient_accumulation_steps == 2  # 8,192 tokens = 4 rows of 2,048 over 2 replicas


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--plan_world_size", "8", "--sequence_parallel_size", "8"], "does not divide the model's 4 attention heads"),
        (["--plan_world_size", "4", "--sequence_parallel_size", "3"], "sequence_parallel_size=3 must be a positive"),
        (["--plan_world_size", "2", "--sequence_parallel_size", "2", "--attn_implementation", "eager"], "eager"),
    ],
)
def test_bad_sequence_parallel_size_is_named_before_any_model_is_loaded(tmp_path, extra, message):
    out = tmp_path / "run"
    argv = ["--config", str(LCFT), "--output_dir", str(out), "--model_name_or_path", str(tmp_path / "none")]
    if "--plan_world_size" in extra:
        argv.append("--plan_only")
    with pytest.raises(ValueError, match=message):
        run_stage("lcft", default_config=LCFT, argv=argv + extra)
    assert not out.exists()


def test_sequence_parallel_needs_a_deepspeed_launch(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["--config", str(LCFT), "--output_dir", str(tmp_path / "run"), "--sequence_parallel_size", "2"]
    with pytest.raises(ValueError, match="sequence_parallel_size=2 runs through DeepSpeed"):
        run_stage("lcft", default_config=LCFT, argv=argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal; tests/gpu runs the kernels")
def test_liger_is_refused_on_cpu_before_any_model_is_loaded(tmp_path):
    out = tmp_path / "run"
    argv = ["--config", str(LCFT), "--output_dir", str(out), "--use_liger_kernel", "true"]
    with pytest.raises(ValueError, match="use_liger_kernel: true needs a CUDA GPU.*Set use_liger_kernel: false"):
        run_stage("lcft", default_config=LCFT, argv=argv)
    assert not out.exists()


def _packed_batch(seq_len=16):
    """Two rows of documents as the stage's collator makes them (the docstring's picture is row 0)."""
    torch.manual_seed(0)
    rows = [
        {"input_ids": torch.randint(3, 100, (seq_len,)).tolist(), "seq_lengths": [5, 7, 4]},
        {"input_ids": torch.randint(3, 100, (seq_len,)).tolist(), "seq_lengths": [9, 3]},  # 4 padding tokens
    ]
    return PackedCollator()(rows)


def test_row_sharding_keeps_per_document_positions_and_every_label():
    batch = _packed_batch()
    shards = [shard_row(batch, 2, rank) for rank in range(2)]
    assert shards[0]["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert shards[1]["position_ids"][0].tolist() == [3, 4, 5, 6, 0, 1, 2, 3]
    for key in ("input_ids", "position_ids"):
        assert torch.equal(torch.cat([s[key] for s in shards], dim=1), batch[key])
    shifted = torch.cat([s["shift_labels"] for s in shards], dim=1)
    assert torch.equal(shifted[:, :-1], batch["labels"][:, 1:]) and (shifted[:, -1] == IGNORE_INDEX).all()
    # the last token of a document never predicts the next document's first token, across the cut too
    ends = [4, 11]
    assert all(shifted[0, e] == IGNORE_INDEX for e in ends)
    with pytest.raises(ValueError, match="does not split into 3 equal shards"):
        shard_row(batch, 3, 0)


def test_sharded_loss_equals_the_whole_row_loss(tiny_model_factory):
    """Token-weighted losses of the shards (transformers' deepspeed_sp_compute_loss) give the row's loss."""
    model = tiny_model_factory(vocab_size=100)
    batch = _packed_batch(32)
    batch = {**batch, "input_ids": batch["input_ids"] % 100}
    with torch.no_grad():
        whole = model(**batch).loss
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    total, count = 0.0, 0
    for rank in range(4):
        shard = shard_row({**batch, "logits": logits}, 4, rank)
        good = (shard["shift_labels"] != IGNORE_INDEX).sum()
        if good:
            loss = torch.nn.functional.cross_entropy(
                shard["logits"].flatten(0, 1), shard["shift_labels"].flatten(), ignore_index=IGNORE_INDEX
            )
            total, count = total + loss * good, count + good
    assert torch.allclose(total / count, whole, atol=1e-6)


def test_check_sequence_parallel_allows_kv_head_replication():
    # 34B: 64 query heads, 8 key/value heads; sp 16 replicates each kv head twice
    check_sequence_parallel(16, world_size=64, num_heads=64, num_kv_heads=8, seq_len=16384)
    with pytest.raises(ValueError, match="does not divide seq_len=100"):
        check_sequence_parallel(8, world_size=8, num_heads=64, num_kv_heads=8, seq_len=100)


def test_recipes_describe_the_memory_plan_of_their_own_run(tiny_model_factory):
    from codellama_hf.planner import ModelShape, memory
    from codellama_hf.speed import describe_memory_plan, memory_plan

    argv = ["--config", str(LCFT), "--plan_only", "--activation_checkpointing", "true"]
    model_args, _, config = parse_stage_config("lcft", argv)
    model = tiny_model_factory(vocab_size=32016)
    setup, estimate = memory_plan(model, model_args, config)
    assert (setup.seq_len, setup.micro_batch, setup.checkpointing, setup.bf16) == (2048, 1, True, False)
    assert estimate == memory(ModelShape.from_config(model.config), setup, 1)
    line = describe_memory_plan(setup, estimate)
    if not torch.cuda.is_available():
        assert line.startswith(f"memory plan: {estimate.total / 2**30:.2f} GiB per process (no GPU)")
    assert "logits" in line and "codellama-hf plan" in line


def test_a_run_that_cannot_fit_its_gpu_is_named_before_loading(monkeypatch):
    """The pre-load verdict on a GPU machine (the device query answered as a 24 GiB GPU would)."""
    from types import SimpleNamespace

    from codellama_hf.planner import ModelShape
    from codellama_hf.speed import warn_if_it_cannot_fit

    argv = ["--config", str(config_path("lcft", "7b")), "--plan_only", "--plan_world_size", "8"]
    model_args, _, config = parse_stage_config("lcft", argv)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: SimpleNamespace(total_memory=24 * 2**30))
    warning = warn_if_it_cannot_fit(ModelShape.from_size("7b"), model_args, config)
    assert warning.startswith("memory plan: per_device_train_batch_size=1 at seq_len=16384 needs about")
    assert "smallest change that fits: " in warning and "ZeRO-3" in warning  # this parse has no DeepSpeed config
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: SimpleNamespace(total_memory=141 * 2**30))
    assert warn_if_it_cannot_fit(ModelShape.from_size("7b"), model_args, config) is None

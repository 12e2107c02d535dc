"""Stage configuration, batch plan and the checks a stage makes before its first step (single process, fast).

The multi-process DeepSpeed runs are in test_stages_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from codellama_hf.training.batch_plan import batch_plan
from codellama_hf.training.config import PAPER_MIN_LR_RATE, config_path, parse_stage_config
from tests.helpers import ROOT

CODE_STAGES = ("code", "python", "lcft")  # the instruct configs are checked in test_instruct_sft.py
CONFIGS = sorted(p for p in (ROOT / "recipes" / "configs").glob("*/*.yaml") if p.stem in CODE_STAGES)
M = 1024 * 1024

# The paper's values (paper §2.6): peak learning rate, FIM rate, and for LCFT tokens per step and steps.
PAPER = {
    ("7b", "code"): dict(lr=3e-4, fim=0.9),
    ("13b", "code"): dict(lr=3e-4, fim=0.9),
    ("34b", "code"): dict(lr=1.5e-4, fim=0.0),
    ("7b", "python"): dict(lr=1e-4, fim=0.0),
    ("13b", "python"): dict(lr=1e-4, fim=0.0),
    ("34b", "python"): dict(lr=1e-4, fim=0.0),
    ("7b", "lcft"): dict(lr=2e-5, tokens=2 * M, steps=3000),
    ("13b", "lcft"): dict(lr=2e-5, tokens=2 * M, steps=10000),
    ("34b", "lcft"): dict(lr=2e-5, tokens=1 * M, steps=11000),
}


def _parse(path: Path, *extra: str):
    return parse_stage_config(path.stem, ["--config", str(path), *extra])


def test_every_size_has_every_stage():
    assert {(p.parent.name, p.stem) for p in CONFIGS} == {
        (size, stage) for size in ("tiny", "7b", "13b", "34b") for stage in CODE_STAGES
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_parses_with_the_papers_values(path):
    size, stage = path.parent.name, path.stem
    world = "2" if size == "tiny" else "64"
    model_args, data_args, config = _parse(path, "--plan_world_size", world, "--plan_only")
    assert config.stage == stage
    assert (config.adam_beta1, config.adam_beta2) == (0.9, 0.95)
    assert config.lr_scheduler_type == "cosine_with_min_lr"
    assert config.lr_scheduler_kwargs == {"min_lr_rate": PAPER_MIN_LR_RATE}
    assert config.plan.tokens_per_step == config.tokens_per_step
    if stage == "lcft":
        assert model_args.rope_theta == 1e6 and model_args.max_position_embeddings == 16384
    if size == "tiny":
        return
    paper = PAPER[size, stage]
    assert config.learning_rate == paper["lr"]
    assert config.warmup_steps == 1000
    if stage == "lcft":
        assert config.seq_len == 16384
        assert (config.plan.tokens_per_step, config.max_steps) == (paper["tokens"], paper["steps"])
        assert data_args.fim_rate == 0.0
    else:
        assert config.seq_len == 4096 and config.plan.tokens_per_step == 4 * M
        assert data_args.fim_rate == paper["fim"]
        assert config.plan.total_tokens >= (500e9 if stage == "code" else 100e9)


def test_7b_on_64_gpus_plan():
    _, _, code = _parse(config_path("code", "7b"), "--plan_world_size", "64", "--plan_only")
    assert code.plan.tokens_per_step == 4 * M == 4_194_304
    assert (code.plan.world_size, code.plan.micro_batch, code.plan.grad_accum) == (64, 4, 4)
    assert code.gradient_accumulation_steps == 4 and code.max_steps == 119_210  # 500B tokens
    _, _, lcft = _parse(config_path("lcft", "7b"), "--plan_world_size", "64", "--plan_only")
    assert lcft.plan.tokens_per_step == 2 * M and lcft.plan.grad_accum == 2 and lcft.plan.total_tokens == 3000 * 2 * M
    _, _, lcft34 = _parse(config_path("lcft", "34b"), "--plan_world_size", "64", "--plan_only")
    assert lcft34.plan.tokens_per_step == 1 * M and lcft34.plan.grad_accum == 1


def test_plan_rejects_a_micro_batch_that_cannot_reach_the_token_batch():
    with pytest.raises(ValueError, match=r"cannot reach the token batch.*exceeds.*per_device_train_batch_size in"):
        batch_plan(tokens_per_step=2 * M, seq_len=16384, micro_batch=4, world_size=64, max_steps=1)
    with pytest.raises(ValueError, match=r"does not divide.*Use per_device_train_batch_size in \[1, 2, 4, 8, 16\]"):
        batch_plan(tokens_per_step=4 * M, seq_len=4096, micro_batch=3, world_size=64, max_steps=1)
    with pytest.raises(ValueError, match="not a whole number of 4,096-token sequences"):
        batch_plan(tokens_per_step=4_000_000, seq_len=4096, micro_batch=1, world_size=8, max_steps=1)
    with pytest.raises(ValueError, match="gradient_accumulation_steps=3 contradicts the plan"):
        batch_plan(tokens_per_step=4 * M, seq_len=4096, micro_batch=4, world_size=64, max_steps=1, grad_accum=3)
    with pytest.raises(ValueError, match="exactly one of max_steps and train_tokens"):
        batch_plan(tokens_per_step=4 * M, seq_len=4096, micro_batch=4, world_size=64, max_steps=5, train_tokens=9)
    # and through the recipe parser, before anything is loaded
    with pytest.raises(ValueError, match="cannot reach the token batch"):
        _parse(config_path("lcft", "34b"), "--plan_world_size", "128", "--plan_only")


def test_command_line_overrides_the_yaml_and_unknown_keys_are_errors(tmp_path):
    model_args, _, config = _parse(
        config_path("code"), "--learning_rate", "1e-4", "--seq_len", "256", "--model_name_or_path", "elsewhere"
    )
    assert config.learning_rate == 1e-4 and config.seq_len == 256 and model_args.model_name_or_path == "elsewhere"
    assert config.plan.sequences_per_step == 4096 // 256

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(config_path("code").read_text()), "learning_rat": 1e-4}))
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown key 'learning_rat' \(did you mean learning_rate"):
        parse_stage_config("code", ["--config", str(bad)])
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--learning_rat'"):
        _parse(config_path("code"), "--learning_rat", "1e-4")
    with pytest.raises(ValueError, match="configures the 'lcft' stage, not 'code'"):
        parse_stage_config("code", ["--config", str(config_path("lcft"))])
    with pytest.raises(FileNotFoundError, match="nowhere.yaml: no such config file"):
        parse_stage_config("code", ["--config", str(tmp_path / "nowhere.yaml")])


def test_recipe_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    from codellama_hf.training import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: lcft\noutput_dir: out\nrope_thetta: 1.0e6\n")
    monkeypatch.setattr("sys.argv", ["lcft.py", "--config", str(bad)])
    with pytest.raises(SystemExit) as exit_info:
        main("lcft", default_config=config_path("lcft"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"lcft stage: error: {bad}: unknown key 'rope_thetta' (did you mean rope_theta?); keys must be fields of "
        "ModelArguments, DataArguments or StageConfig (see `--help`)"
    )


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="fim_rate=1.5: must be between 0 and 1"):
        _parse(config_path("code"), "--fim_rate", "1.5")
    with pytest.raises(ValueError, match="gradient_accumulation_steps=3 contradicts"):
        _parse(config_path("code"), "--gradient_accumulation_steps", "3")
    with pytest.raises(ValueError, match="plan_world_size=8 but this launch has 1"):
        _parse(config_path("code"), "--plan_world_size", "8")


# ---------------------------------------------------------------------------------------------------------------
# Checks before the first step: vocabulary, theta, corpus
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def stage_args(tmp_path):
    """Parsed tiny lcft arguments writing into tmp_path, with extra overrides."""

    def make(stage="lcft", *extra):
        return parse_stage_config(
            stage,
            [
                "--config",
                str(config_path(stage)),
                "--output_dir",
                str(tmp_path / "out"),
                "--report_to",
                "none",
                *extra,
            ],
        )

    return make


def test_vocabulary_mismatch_is_an_error_unless_resizing(stage_args, tiny_tokenizer_dir, tiny_model_factory, tmp_path):
    from codellama_hf.training.model import load_tokenizer_and_model

    folder = tmp_path / "small-vocab"
    tiny_model_factory(4000).save_pretrained(folder)  # Llama-2-like: no rows for the 16 infilling pieces
    model_args, _, config = stage_args(
        "code", "--model_name_or_path", str(folder), "--tokenizer_name_or_path", str(tiny_tokenizer_dir)
    )
    with pytest.raises(ValueError, match=r"vocabulary mismatch: .* has 4000 embedding rows but tokenizer .* 4016"):
        load_tokenizer_and_model(model_args, config)
    model_args.resize_token_embeddings = True
    tokenizer, model, base = load_tokenizer_and_model(model_args, config)
    assert model.get_input_embeddings().num_embeddings == model.lm_head.out_features == len(tokenizer) == 4016
    assert base["name_or_path"] == str(folder) and base["lineage"] is None


def test_theta_is_set_through_rope_parameters_and_checked(
    stage_args, tiny_tokenizer_dir, tiny_model_factory, tmp_path
):
    from transformers import GPT2Config, GPT2LMHeadModel

    from codellama_hf.models import effective_rope_theta
    from codellama_hf.training.model import load_tokenizer_and_model

    folder = tmp_path / "code-model"
    tiny_model_factory(4016).save_pretrained(folder)
    model_args, _, config = stage_args(
        "lcft", "--model_name_or_path", str(folder), "--tokenizer_name_or_path", str(tiny_tokenizer_dir)
    )
    _, model, _ = load_tokenizer_and_model(model_args, config)
    assert effective_rope_theta(model) == pytest.approx(1e6, rel=1e-6)
    assert model.config.rope_parameters["rope_theta"] == 1e6 and model.config.max_position_embeddings == 16384

    gpt2 = tmp_path / "gpt2"  # learned positions: no rotary embedding for a theta to act on
    GPT2LMHeadModel(GPT2Config(vocab_size=4016, n_embd=32, n_layer=1, n_head=2)).save_pretrained(gpt2)
    model_args.model_name_or_path = str(gpt2)
    with pytest.raises(ValueError, match=r"rope_theta=1e\+06 cannot take effect on .*gpt2: .* no rotary"):
        load_tokenizer_and_model(model_args, config)

    model_args.model_name_or_path, model_args.rope_theta = str(folder), -1.0
    with pytest.raises(ValueError, match="rope_theta=-1.0: must be positive"):
        load_tokenizer_and_model(model_args, config)
    model_args.rope_theta, model_args.max_position_embeddings = None, None
    tiny_model_factory(4016, max_position_embeddings=1024).save_pretrained(folder)
    with pytest.raises(ValueError, match="seq_len=2048 exceeds the model's max_position_embeddings=1024"):
        load_tokenizer_and_model(model_args, config)


def test_empty_corpus_is_an_error(stage_args, tiny_tokenizer, tmp_path):
    from codellama_hf.training.stages import corpus_documents

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.py").write_text("")
    _, data_args, config = stage_args("python", "--dataset_mixture", "none", "--dataset_sources", str(empty))
    with pytest.raises(ValueError, match="no documents kept from"):
        corpus_documents(data_args, config, tiny_tokenizer)


def test_sources_stream_packed_rows(stage_args, tiny_tokenizer, tmp_path):
    from codellama_hf.training.run import build_stream
    from codellama_hf.training.stage import get_stage

    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(40):
        (folder / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i * i}\n" * 8)
    (folder / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))  # not UTF-8: skipped and counted
    _, data_args, config = stage_args(
        "code",
        "--seq_len",
        "128",
        "--tokens_per_step",
        "512",
        "--dataset_mixture",
        "none",
        "--dataset_sources",
        str(folder),
    )
    data, stream = build_stream(get_stage("code"), data_args, config, tiny_tokenizer, rank=0)
    assert data.info["documents"] == 40 and sum(data.info["skipped_when_read"].values()) == 1
    first = list(stream.rows(3))
    assert len(first) == 3 * config.per_device_train_batch_size
    assert all(len(r["input_ids"]) == 128 and sum(r["seq_lengths"]) <= 128 for r in first)
    assert not list(Path(config.output_dir).glob("*"))  # nothing written under output_dir


def test_a_source_that_disappears_is_named(stage_args, tiny_tokenizer, tmp_path):
    from codellama_hf.training.stages import corpus_documents

    gone = tmp_path / "deleted-repo"
    _, data_args, config = stage_args("code", "--dataset_mixture", "none", "--dataset_sources", str(gone))
    with pytest.raises(FileNotFoundError, match="deleted-repo does not exist"):
        corpus_documents(data_args, config, tiny_tokenizer)


@pytest.mark.parametrize("path", sorted((ROOT / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load_and_zero3_saves_weights(path):
    from accelerate.commands.config.config_args import ClusterConfig

    from codellama_hf.training.trainer import check_zero3_saves_weights

    config = ClusterConfig.from_yaml_file(str(path))
    if config.distributed_type != "DEEPSPEED":
        return
    # accelerate refuses settings given both here and in the JSON file; they all live in the JSON
    assert set(config.deepspeed_config) == {"deepspeed_config_file", "deepspeed_multinode_launcher", "zero3_init_flag"}
    shipped = json.loads((ROOT / config.deepspeed_config["deepspeed_config_file"]).read_text())
    assert shipped["zero_optimization"]["stage"] == 3 and shipped["train_batch_size"] == "auto"
    check_zero3_saves_weights(shipped)
    shipped["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    with pytest.raises(ValueError, match="without stage3_gather_16bit_weights_on_model_save: true"):
        check_zero3_saves_weights(shipped)


def test_fim_needs_the_infilling_pieces(stage_args, tmp_path):
    from transformers import AutoTokenizer

    from codellama_hf.tokenizer import build_tiny_tokenizer
    from codellama_hf.training.stages import corpus_documents

    plain = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path / "plain", infilling=False))
    _, data_args, config = stage_args("code")
    with pytest.raises(ValueError, match="fim_rate=0.9 needs a tokenizer with the infilling pieces"):
        corpus_documents(data_args, config, plain)


# ---------------------------------------------------------------------------------------------------------------
# Output folder and resuming
# ---------------------------------------------------------------------------------------------------------------


def _checkpoint(out: Path, step: int, signature: dict | None) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    if signature is not None:
        (folder / "run_signature.json").write_text(json.dumps(signature))
    return folder


def test_resume_takes_the_newest_complete_checkpoint_with_the_same_settings(stage_args, tiny_tokenizer, tmp_path):
    from codellama_hf.training.checkpoints import latest_checkpoint, prepare_output_dir, resume_checkpoint
    from codellama_hf.training.run import build_stream, run_signature, stream_settings
    from codellama_hf.training.stage import get_stage

    _, data_args, config = stage_args("code", "--resume_from_checkpoint")
    assert config.resume_from_checkpoint == "latest"
    out = Path(config.output_dir)
    data, stream = build_stream(get_stage("code"), data_args, config, tiny_tokenizer, rank=0)

    def signature():
        return run_signature(config, data_args, data, stream_settings(config, data_args), tiny_tokenizer)

    assert resume_checkpoint(config, signature()) is None  # nothing yet: a fresh start
    _checkpoint(out, 20, json.loads(json.dumps(signature())))
    _checkpoint(out, 40, None)  # killed while saving: no signature yet
    assert latest_checkpoint(out) == out / "checkpoint-20"
    assert resume_checkpoint(config, signature()) == str(out / "checkpoint-20")

    # Anything that changes the data is refused, naming the field
    for field, value, named in (
        ("fim_rate", 0.5, "data.fim_rate: 0.9 -> 0.5"),
        ("data_streams_per_process", 4, "data.data_streams_per_process: 2 -> 4"),
        ("packing_buffer", 32, "stream.chunk_documents: 64 -> 32"),
    ):
        before = getattr(data_args, field)
        setattr(data_args, field, value)
        with pytest.raises(ValueError, match=rf"checkpoint-20: it was written under different settings \(.*{named}"):
            resume_checkpoint(config, signature())
        setattr(data_args, field, before)
    config.seed = 7
    with pytest.raises(ValueError, match=r"seed: 42 -> 7"):
        resume_checkpoint(config, signature())
    config.seed = 42
    edited = data.documents.map(lambda text: {"text": text + "# edited\n"}, input_columns="text")
    data.documents = edited  # a source changed between the runs: as many documents, other text
    with pytest.raises(ValueError, match=r"documents.digest: '\w+' -> '\w+'\)"):
        resume_checkpoint(config, signature())
    data.documents = edited.select(range(10))  # documents removed
    with pytest.raises(ValueError, match=r"documents.digest: '\w+' -> '\w+'; documents.rows: \d+ -> 10\)"):
        resume_checkpoint(config, signature())

    config.resume_from_checkpoint, config.overwrite_output_dir = None, False  # a new run may not mix into the old
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume_from_checkpoint"):
        prepare_output_dir(config)
    config.overwrite_output_dir = True  # unless asked to start over
    prepare_output_dir(config)
    assert not out.exists()


def test_the_documents_digest_sees_any_change_to_the_table(tmp_path):
    import datasets

    from codellama_hf.training.run import documents_digest

    texts = [f"def f{i}():\n    return {i}\n" for i in range(1000)]
    docs = datasets.Dataset.from_dict({"text": texts})
    base = documents_digest(docs)
    assert documents_digest(datasets.Dataset.from_dict({"text": texts})) == base
    assert documents_digest(docs.select(range(1000))) == base  # the same documents behind an indices mapping
    # one document edited in place (row 1 is none of 256 evenly spaced rows), two swapped, an empty one added
    edited = datasets.Dataset.from_dict({"text": [texts[0], texts[1].replace("1", "7"), *texts[2:]]})
    for changed in (edited, docs.select([1, 0, *range(2, 1000)]), datasets.Dataset.from_dict({"text": [*texts, ""]})):
        assert documents_digest(changed) != base
    # A table beyond full_hash_bytes is identified by its cache files (name, size, first and last MiB)
    docs.save_to_disk(tmp_path / "a")
    edited.save_to_disk(tmp_path / "b")
    on_disk, edited_on_disk = datasets.load_from_disk(tmp_path / "a"), datasets.load_from_disk(tmp_path / "b")
    assert documents_digest(on_disk) == base  # small: hashed whole, wherever it lives
    by_files = documents_digest(on_disk, full_hash_bytes=0)
    assert by_files == documents_digest(datasets.load_from_disk(tmp_path / "a"), full_hash_bytes=0)
    assert documents_digest(edited_on_disk, full_hash_bytes=0) != by_files

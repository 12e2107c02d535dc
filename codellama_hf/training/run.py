"""Running a registered stage: the numbered steps a recipe script would have, shared by every stage.

    accelerate launch recipes/<stage>.py [--config file.yaml] [--field value ...]

1. distributed setup (explicit: gloo for DeepSpeed on CPU), then YAML + command line -> dataclasses and batch plan;
2. tokenizer and model; 3. the stage's documents and the stream each process reads; 4. the trainer, resuming from
the newest complete checkpoint under the same settings; 5. train; 6. save the model with its lineage.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from codellama_hf import speed
from codellama_hf.attention import prepare_collator, resolve_attn_implementation
from codellama_hf.data.stream import PackedStream, StreamSettings
from codellama_hf.models import effective_rope_theta
from codellama_hf.tokenizer import infill_ids
from codellama_hf.training.checkpoints import prepare_output_dir, resume_checkpoint
from codellama_hf.training.config import parse_stage_config, read_config_file, with_config
from codellama_hf.training.distributed import main_print, process_state, setup_distributed
from codellama_hf.training.lineage import LINEAGE_FILE, lineage_record, print_summary, save_final
from codellama_hf.training.model import load_tokenizer_and_model
from codellama_hf.training.precision import check_deepspeed_config
from codellama_hf.training.stage import Stage, StageData, get_stage
from codellama_hf.training.stages import data_seed
from codellama_hf.training.trainer import StageTrainer, check_zero3_saves_weights


def stream_settings(config, data_args) -> StreamSettings:
    plan = config.plan
    return StreamSettings(
        seq_len=plan.seq_len,
        micro_batch=plan.micro_batch,
        world_size=plan.world_size,
        streams_per_process=data_args.data_streams_per_process,
        seed=data_seed(config),
        chunk_documents=data_args.packing_buffer,
        # with Ulysses (sequence_parallel > 1) DeepSpeed's adapter turns each batch into sequence_parallel shards
        total_batches=plan.max_steps * plan.grad_accum // plan.sequence_parallel,
    )


def build_stream(stage: Stage, data_args, config, tokenizer, *, rank: int) -> tuple[StageData, PackedStream]:
    """The stage's documents and the stream process `rank` reads from them."""
    data = stage.build_data(data_args, config, tokenizer)
    stream = PackedStream(
        data.documents,
        data.encoder,
        stream_settings(config, data_args),
        rank=rank,
        pad_id=tokenizer.eos_token_id,
        text_column=data.text_column or data_args.text_column,
    )
    return data, stream


FULL_HASH_BYTES = 8 << 30  # tables up to this much Arrow data are hashed whole (xxh3: well under a second per GiB)
EDGE_BYTES = 1 << 20


def documents_digest(documents, column: str = "text", *, full_hash_bytes: int = FULL_HASH_BYTES) -> str:
    """The identity of the document table that a resume must find again: a source that changed is refused.

    Up to `full_hash_bytes` of Arrow data (every corpus this machine trains on in hours), xxh3-128 of every
    document's length and bytes in table order: any edited, added, removed or reordered document changes it, at
    memory speed. Larger tables (the paper's stages read terabytes; hashing them would add minutes to every launch
    and resume) are memory-mapped files in the datasets cache, which corpus/sources.py keys by every source file's
    size and mtime, so a changed source gives other files: the digest then covers each file's name, size and first
    and last MiB, plus 256 evenly spaced documents. The trade-off: an edit in place of a cache file that keeps its
    size and both ends goes unnoticed there. datasets' own fingerprints are random for unhashable transforms, so
    they are not used.
    """
    import pyarrow as pa
    import xxhash

    digest = xxhash.xxh3_128(f"{len(documents)}\0{column}".encode())
    if documents.data.nbytes <= full_hash_bytes or not documents.cache_files:
        for batch in documents.select_columns([column]).with_format("arrow").iter(batch_size=1 << 16):
            _hash_arrow(digest, batch.column(0).combine_chunks(), pa)
        return digest.hexdigest()
    for entry in documents.cache_files:
        path = Path(entry["filename"])
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}".encode())
        with path.open("rb") as f:
            digest.update(f.read(EDGE_BYTES))
            f.seek(max(0, size - EDGE_BYTES))
            digest.update(f.read(EDGE_BYTES))
    picks = sorted({round(i * (len(documents) - 1) / 255) for i in range(256)})
    _hash_arrow(digest, documents.select(picks).with_format("arrow")[column].combine_chunks(), pa)
    return digest.hexdigest()


def _hash_arrow(digest, array, pa) -> None:
    """Feed one Arrow array to `digest`: lengths then bytes for text (independent of how the table is sliced),
    Arrow's IPC serialisation for other column types (e.g. the repositories of repository-level samples)."""
    if pa.types.is_string(array.type) or pa.types.is_binary(array.type) or pa.types.is_large_string(array.type):
        width = np.int64 if pa.types.is_large_string(array.type) else np.int32
        offsets = np.frombuffer(array.buffers()[1], dtype=width)[array.offset : array.offset + len(array) + 1]
        digest.update(np.diff(offsets).astype("<i8").tobytes())
        if array.null_count:
            digest.update(array.is_null().to_numpy(zero_copy_only=False).tobytes())
        if len(offsets) and offsets[-1] > offsets[0]:
            digest.update(memoryview(array.buffers()[2])[int(offsets[0]) : int(offsets[-1])])
        return
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.schema([("x", array.type)])) as writer:
        writer.write_batch(pa.record_batch([array], names=["x"]))
    digest.update(memoryview(sink.getvalue()))


def run_signature(config, data_args, data: StageData, settings: StreamSettings, tokenizer) -> dict:
    """The settings that fix the sequence of batches; a checkpoint resumes only under the same ones."""
    vocabulary = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else str(tokenizer)
    return {
        "stage": config.stage,
        "plan": {k: v for k, v in config.plan.to_dict().items() if k in ("world_size", "micro_batch", "grad_accum")}
        | {"seq_len": config.seq_len, "max_steps": config.plan.max_steps},
        "seed": config.seed,
        "data_seed": config.data_seed,
        "data": asdict(data_args),
        "stream": asdict(settings),
        "documents": {
            "rows": len(data.documents),
            "digest": documents_digest(data.documents, data.text_column or data_args.text_column),
        },
        "tokenizer": hashlib.sha256(vocabulary.encode()).hexdigest()[:16],
    }


def quick_eval_callback(config, tokenizer):
    """The QuickEvalCallback the recipe asks for (`quick_eval`), or None."""
    if not config.quick_eval:
        return None
    from codellama_hf.evaluation.during_training import QuickEvalCallback, QuickEvalConfig

    settings = QuickEvalConfig.from_options(
        config.quick_eval_options,
        every_steps=config.quick_eval_steps,
        evaluations=tuple(config.quick_eval),
        repositories=tuple(config.quick_eval_repositories or ()),
        allow_code_execution=config.quick_eval_allow_code_execution,
        seed=config.seed,
    )
    return QuickEvalCallback(tokenizer, settings)


def run_stage(
    stage: str | Stage,
    *,
    default_config: str | os.PathLike | None = None,
    argv: list[str] | None = None,
    callbacks: list | None = None,
) -> Path | None:
    """Parse the recipe, train the stage and save it; returns the output folder (None with plan_only).

    `callbacks` are extra transformers TrainerCallbacks (benches and experiments watch or steer the run with them).
    """
    stage = get_stage(stage) if isinstance(stage, str) else stage
    argv = with_config(argv, default_config or stage.default_config)
    # 1. Processes (an explicit step: gloo for DeepSpeed on CPU, before TrainingArguments sets up accelerate), then
    # the configuration: YAML + command line -> dataclasses and the batch plan
    setup_distributed(deepspeed="--deepspeed" in argv or bool(read_config_file(argv[1]).get("deepspeed")))
    model_args, data_args, config = parse_stage_config(stage.name, argv)
    if not config.plan_only or model_args.attn_implementation == "auto":  # a GPU backend is no error in a preview
        model_args.attn_implementation = resolve_attn_implementation(model_args.attn_implementation, report=main_print)
    speed.prepare(model_args, config)  # Liger / sequence-parallel settings checked before any weights are read
    if config.plan_only:
        print(config.plan.describe())
        return None
    _ = config.device  # accelerate's state, set up the way TrainingArguments wants it (backend, timeout)
    main_print(f"[bold]{stage.name} stage[/bold] -> {config.output_dir}\n{config.plan.describe()}")
    if stage.check_data is not None:
        stage.check_data(data_args)
    prepare_output_dir(config)
    # 2. Tokenizer and model (theta set through rope_parameters and checked in the rotary embedding; LoRA adapters)
    tokenizer, model, base = load_tokenizer_and_model(model_args, config)
    if stage.chat_template is not None:
        tokenizer.chat_template = stage.chat_template
    parameters = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3 partitions them
    main_print(
        f"model: {parameters:,} parameters, rope theta {effective_rope_theta(model):,.0f}, "
        f"vocabulary {len(tokenizer):,}"
    )
    speed.register_fused_loss_weight(model, config)
    main_print(speed.describe_memory_plan(*speed.memory_plan(model, model_args, config)))
    # 3. Data: the stage's documents, streamed by this process's share (tokenized, FIM'd and packed in workers)
    state = process_state()
    data, stream = build_stream(stage, data_args, config, tokenizer, rank=state.process_index)
    settings = stream.settings
    main_print(
        f"data: {len(data.documents):,} documents in {stream.shards} streams ({settings.world_size} processes x "
        f"{settings.streams_per_process}), {config.dataloader_num_workers} dataloader workers per process"
    )
    # 4. Trainer, resuming where a checkpoint left off
    signature = run_signature(config, data_args, data, settings, tokenizer)
    resume = resume_checkpoint(config, signature)
    collator = stage.collator()  # given the attention backend's inputs (attention.py) for the packed documents
    prepare_collator(collator, stream, config.per_device_train_batch_size, model.config._attn_implementation)
    trainer = StageTrainer(
        model=model,
        args=config,
        train_dataset=stream,
        data_collator=collator,
        processing_class=tokenizer,
        infill=infill_ids(tokenizer) if data.fim else None,
        signature=signature,
        callbacks=callbacks,
    )
    quick = quick_eval_callback(config, tokenizer)
    if quick is not None:
        quick.attach(trainer)
    if trainer.is_deepspeed_enabled:
        check_zero3_saves_weights(trainer.accelerator.state.deepspeed_plugin.deepspeed_config)
        check_deepspeed_config(trainer.accelerator.state.deepspeed_plugin.deepspeed_config)
    # 5. Train
    started = time.time()
    trainer.train(resume_from_checkpoint=resume)
    # 6. Save the final model with its lineage, and say where it went
    data.info["epochs"] = 1 + max((p.epoch for p in trainer.data_positions.values()), default=0)  # process 0's
    lineage = lineage_record(
        config=config,
        base=base,
        data_info=data.info,
        model=trainer.model,
        tokenizer=tokenizer,
        trainer=trainer,
        runtime=time.time() - started,
    )
    if stage.chat_template is not None:
        lineage["chat_template"] = stage.chat_template
    if quick is not None:
        lineage["evaluations_during_training"] = quick.summary()
    out = save_final(trainer, lineage, model_args)
    if state.is_main_process:
        print_summary(json.loads((out / LINEAGE_FILE).read_text()), out, config)
    return out


def main(stage: str, *, default_config: str | os.PathLike | None = None) -> None:
    """Entry point of recipes/<stage>.py: bad input ends in one line that names the problem (exit 2), as in the CLI."""
    try:
        run_stage(stage, default_config=default_config)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"{stage} stage: error: {err}", file=sys.stderr)
        sys.exit(2)

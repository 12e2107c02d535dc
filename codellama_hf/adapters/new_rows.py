"""Training and saving the embedding rows a stage added (Llama 2 -> Code Llama's infilling pieces) under LoRA.

The new rows of the input and output embeddings must be trained and saved too, else they stay at their initial
values and are lost on reload. By default only those rows are: peft's `trainable_token_indices`
(TrainableTokensModel) keeps a copy of the rows it trains, the adapter file holds them (16 x 4096 x 2 matrices in
bf16 = 256 KiB for 7B) instead of both whole matrices as `modules_to_save` (2 x 32016 x 4096 in bf16 = 500 MiB),
and merging writes them back with `index_copy`. Tied embeddings (SmolLM2) share one copy.
`lora_modules_to_save: [embed_tokens, lm_head]` still trains the whole matrices when asked. See
docs/stack-notes.md for what peft saves by default.
"""

from __future__ import annotations

from codellama_hf.adapters.options import AdapterArguments


def _embedding_names(model) -> tuple[str, str | None]:
    """Last name components of the input and output embedding modules (embed_tokens, lm_head for Llama)."""
    embed, output = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(module): name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    return names[id(embed)], names.get(id(output)) if output is not None else None


def grown_rows(model) -> list[int]:
    """Embedding rows the model has beyond its saved checkpoint's vocabulary (empty when it did not grow)."""
    from transformers import AutoConfig

    saved = AutoConfig.from_pretrained(model.name_or_path).vocab_size
    rows = model.get_input_embeddings().num_embeddings  # the module attribute survives ZeRO-3 partitioning
    return list(range(saved, rows))


def new_row_tokens(model, options: AdapterArguments) -> dict[str, list[int]] | None:
    """peft `trainable_token_indices` for the rows the vocabulary grew by, or None (no growth / whole matrices).

    The new rows must be trained and saved with the adapter, else they stay at their initial values and are lost
    on reload. Tied embeddings (SmolLM2) are one matrix: peft ties lm_head to the embedding's trained rows.
    """
    new = grown_rows(model)
    if not new:
        return None
    embed, output = _embedding_names(model)
    whole = set(options.lora_modules_to_save or [])
    tied = output is None or bool(getattr(model.config, "tie_word_embeddings", False))  # as peft decides
    needed = {embed} if tied else {embed, output}
    if needed <= whole:
        return None  # the whole matrices train, as asked
    if whole & needed:
        raise ValueError(
            f"the vocabulary grew from {new[0]} to {new[-1] + 1} rows and lora_modules_to_save trains "
            f"{sorted(whole & needed)} in full but not {sorted(needed - whole)}: list both, or neither (then only "
            "the new rows are trained, with peft's trainable_token_indices)"
        )
    return {embed: new} if tied else {embed: new, output: new}


def check_zero3_tokens(tokens) -> None:
    """peft gathers trainable rows under ZeRO-3 through a CUDA broadcast (TrainableTokensLayer); say so on CPU."""
    import torch
    from transformers.integrations import is_deepspeed_zero3_enabled

    if tokens and is_deepspeed_zero3_enabled() and not torch.cuda.is_available():
        raise ValueError(
            "the new embedding rows are trained with peft's trainable_token_indices, which under DeepSpeed ZeRO-3 "
            "needs CUDA (peft broadcasts the rows on a GPU); on CPU set lora_modules_to_save: [embed_tokens, "
            "lm_head] to train the whole matrices, or train without ZeRO-3"
        )


def save_without_base_embeddings(peft_model) -> None:
    """Make every save of this model (stage end, Trainer checkpoints) write only what was trained.

    peft's save_embedding_layers="auto" adds the full embedding and output matrices whenever the vocabulary differs
    from the base checkpoint's: next to trainable_token_indices' rows, and with modules_to_save even twice more
    (the frozen original and the base weight beside the trained copy: 6 matrices, 1.6 GB in bf16 for 7B). Loading
    grows the base first (load_adapter) and the trained rows or matrices replace every new row, so none is needed.
    """
    import functools

    save = peft_model.save_pretrained
    peft_model.save_pretrained = functools.partial(save, save_embedding_layers=False)


def trained_rows(peft_config) -> dict[str, list[int]]:
    """{module: [first, last]} of the embedding rows trained with trainable_token_indices (empty when none)."""
    indices = getattr(peft_config, "trainable_token_indices", None) or {}
    if isinstance(indices, list):
        indices = {"embed_tokens": indices}
    return {name: [min(ids), max(ids)] for name, ids in sorted(indices.items()) if ids}

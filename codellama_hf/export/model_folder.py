"""The one writer of portable model folders: what every stage, checkpoint, conversion, merge and Hub staging saves.

A folder is portable when the tools Code Llama users run all read it the same way:

- `tokenizer.model`, the exact SentencePiece model the tokenizer was built from. llama.cpp's own converter
  builds a SentencePiece-exact vocabulary from it; without it, it falls back to tokenizer.json and tokenizes code
  differently (docs/stack-notes.md, llama.cpp). Meta's own releases ship it.
- `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` that transformers 4.x (>= 4.40) and
  5.x load to the same ids (codellama_hf.tokenizer.tokenizer_config), with the chat template of instruct models.
- `config.json` with both `rope_parameters` (5.x) and a top-level `rope_theta` (4.x, vLLM, llama.cpp): a 5.x
  config alone would be read by 4.x with theta 10,000 (docs/stack-notes.md).
- `generation_config.json` that stops at </s>, and also at ▁<EOT> for models that infill (Meta's infilling ends
  with EOT, not EOS: Meta's llama/generation.py), without the `use_cache: false` a training run leaves there.

transformers 5's `save_pretrained` writes none of that correctly (no tokenizer.model, a 5-only class name, a list
where 4.x wants a mapping), so every save in this toolkit ends with `complete_model_folder`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from codellama_hf.io import read_json_object, write_json

GENERATION_CONFIG = "generation_config.json"

_KEEP = object()


class MissingSentencePiece(FileNotFoundError):
    """The folder (and its tokenizer) does not say which SentencePiece model it was built from."""


def explain_missing_sentencepiece(folder: Path) -> str:
    return (
        f"{folder}: no tokenizer.model (the SentencePiece model the tokenizer was built from). Folders saved by "
        "transformers alone lack it. Provide the one this model was trained with, e.g. the tokenizer.model in the "
        "folder `codellama-hf tokenizer` built, or in the Meta checkpoint it was converted from: "
        f"`codellama-hf export folder {folder} --sentencepiece PATH/tokenizer.model` checks that it matches "
        "tokenizer.json and completes the folder"
    )


def _check_same_vocabulary(proto, folder: Path, tokenizer, source: Path) -> None:
    """tokenizer.model must be the model behind the tokenizer being saved: same pieces at the same ids."""
    pieces = {p.piece: i for i, p in enumerate(proto.pieces)}
    vocab = None
    if tokenizer is not None and hasattr(tokenizer, "get_vocab"):
        vocab = tokenizer.get_vocab()
        what = f"the tokenizer {getattr(tokenizer, 'name_or_path', '') or ''}".rstrip()
    elif (folder / "tokenizer.json").is_file():
        vocab = {**json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]}
        for added in json.loads((folder / "tokenizer.json").read_text()).get("added_tokens", []):
            vocab[added["content"]] = added["id"]
        what = str(folder / "tokenizer.json")
    if vocab is None or vocab == pieces:
        return
    extra = sorted(set(vocab) - set(pieces), key=vocab.get)[:5]
    moved = sorted((p for p in set(vocab) & set(pieces) if vocab[p] != pieces[p]), key=pieces.get)[:5]
    raise ValueError(
        f"{source} is not the SentencePiece model of {what}: {len(pieces)} pieces vs {len(vocab)} tokens"
        + (f"; tokens it lacks: {extra}" if extra else "")
        + (f"; pieces at other ids: {moved}" if moved else "")
        + ". Use the tokenizer.model the model was trained with"
    )


def _existing_chat_template(folder: Path, tokenizer) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = read_json_object(config, "the tokenizer config").get("chat_template")
        if isinstance(template, str):
            return template
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else None


def stop_ids(proto) -> dict:
    """bos/eos ids for generation_config.json: eos is [</s>, ▁<EOT>] for a model that infills, else </s>."""
    from codellama_hf.tokenizer import EOT, has_infilling_pieces

    eos = proto.trainer_spec.eos_id
    if has_infilling_pieces(proto):
        eos = [eos, next(i for i, p in enumerate(proto.pieces) if p.piece == EOT)]
    return {"bos_token_id": proto.trainer_spec.bos_id, "eos_token_id": eos}


def complete_model_folder(
    folder: str | os.PathLike,
    *,
    tokenizer=None,
    sentencepiece: str | os.PathLike | None = None,
    chat_template=_KEEP,
) -> Path:
    """Make `folder` portable in place: tokenizer files from the SentencePiece model, both rope keys, stop ids.

    sentencepiece: the tokenizer.model to use; default the folder's own, else the one `tokenizer` (a loaded
    transformers tokenizer) was built from. chat_template: a template, None for none, default: keep the folder's
    (or the tokenizer's). Each file is replaced by rename; the weights are not touched. Idempotent.
    """
    from codellama_hf.models import write_config_with_both_rope_keys
    from codellama_hf.tokenizer import load_sp_model, sentencepiece_file, write_tokenizer_files

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    source = Path(sentencepiece) if sentencepiece is not None else None
    if source is None and (folder / "tokenizer.model").is_file():
        source = folder / "tokenizer.model"
    if source is None and tokenizer is not None:
        source = sentencepiece_file(tokenizer)
    if source is None:
        bpe = byte_level_tokenizer(folder, tokenizer)
        if bpe is not None:
            return _complete_byte_level_folder(folder, bpe)
        raise MissingSentencePiece(explain_missing_sentencepiece(folder))
    proto = load_sp_model(source)
    _check_same_vocabulary(proto, folder, tokenizer, source)
    if chat_template is _KEEP:
        chat_template = _existing_chat_template(folder, tokenizer)

    config_path = folder / "config.json"
    if config_path.is_file():
        rows = read_json_object(config_path, "the model config").get("vocab_size")
        if isinstance(rows, int) and rows < len(proto.pieces):
            raise ValueError(
                f"{config_path}: vocab_size {rows} is smaller than the {len(proto.pieces)} pieces of {source}: "
                "the tokenizer can produce ids the model has no embedding for"
            )
        write_config_with_both_rope_keys(folder)
        generation_path = folder / GENERATION_CONFIG
        generation = read_json_object(generation_path) if generation_path.is_file() else {}
        if generation.get("use_cache") is False:  # training turns the KV cache off; generating wants it
            del generation["use_cache"]
        write_json(generation_path, {**generation, **stop_ids(proto)}, sort_keys=True)
    write_tokenizer_files(proto, folder, chat_template=chat_template)
    return folder


def byte_level_tokenizer(folder: Path, tokenizer=None):
    """The folder's tokenizer when it is byte-level BPE (Llama 3-style, SmolLM2: no SentencePiece model), else None."""
    from codellama_hf.tokenizer.bpe import BYTE_LEVEL, tokenizer_kind

    if tokenizer is None and (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer is None or getattr(tokenizer, "backend_tokenizer", None) is None:
        return None
    return tokenizer if tokenizer_kind(tokenizer) == BYTE_LEVEL else None


def _complete_byte_level_folder(folder: Path, tokenizer) -> Path:
    """A byte-level BPE base has no tokenizer.model: tokenizer.json is the vocabulary (llama.cpp's converter reads
    it for BPE models). Both rope keys, and generation stops at EOS and, once it has the FIM tokens, at <EOT>."""
    from codellama_hf.models import write_config_with_both_rope_keys
    from codellama_hf.tokenizer import BPE_SENTINELS

    if not (folder / "tokenizer.json").is_file():
        tokenizer.save_pretrained(folder)
    _readable_by_transformers4(folder / "tokenizer_config.json")
    if (folder / "config.json").is_file():
        write_config_with_both_rope_keys(folder)
        vocab = tokenizer.get_vocab()
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        eos += [vocab[BPE_SENTINELS[3]]] if BPE_SENTINELS[3] in vocab else []
        generation_path = folder / GENERATION_CONFIG
        generation = read_json_object(generation_path) if generation_path.is_file() else {}
        if generation.get("use_cache") is False:  # as for SentencePiece folders: generating wants the cache
            del generation["use_cache"]
        stops = {"eos_token_id": eos[0] if len(eos) == 1 else eos} if eos else {}
        if tokenizer.bos_token_id is not None:
            stops["bos_token_id"] = tokenizer.bos_token_id
        write_json(generation_path, {**generation, **stops}, sort_keys=True)
    return folder


def _readable_by_transformers4(path: Path) -> None:
    """transformers 5 writes a class name and a list that 4.x cannot read (docs/stack-notes.md): name the generic
    fast tokenizer and move the list to `additional_special_tokens`, which both read."""
    if not path.is_file():
        return
    config = read_json_object(path, "the tokenizer config")
    fixed = dict(config)
    if fixed.get("tokenizer_class") == "TokenizersBackend":
        fixed["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = fixed.get("extra_special_tokens")
    if isinstance(extra, list):
        del fixed["extra_special_tokens"]
        if extra:
            fixed["additional_special_tokens"] = extra
    if fixed != config:
        write_json(path, fixed)


def complete_checkpoint_callback():
    """A TrainerCallback that completes every checkpoint-N folder as soon as the Trainer has saved it."""
    from transformers import TrainerCallback

    class CompleteCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, processing_class=None, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not (state.is_world_process_zero and folder.is_dir()):
                return
            if processing_class is None and not (folder / "tokenizer.model").is_file():
                from codellama_hf.models import write_config_with_both_rope_keys

                if (folder / "config.json").is_file():  # a Trainer without a tokenizer saves none
                    write_config_with_both_rope_keys(folder)
                return
            complete_model_folder(folder, tokenizer=processing_class)

    return CompleteCheckpoints()

"""An Ollama Modelfile beside a GGUF: the model's prompt template and stop strings.

Three kinds, read from the model folder:

- instruct (a chat template in the tokenizer config): Meta's `chat_completion` format (codellama_hf.chat),
  `[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] ...`.
- infill (the ▁<PRE> ▁<SUF> ▁<MID> ▁<EOT> pieces, 7B/13B): a request with a suffix renders
  `▁<PRE>{prefix}▁<SUF>{suffix}▁<MID>`; without one, plain completion. Ollama's runner tokenizes like llama.cpp:
  raw text after a special token gets SentencePiece's implicit space, which gives Meta's `encode(prefix)` after
  ▁<PRE>, and after ▁<SUF> the same extra 29871 that llama.cpp's /infill puts before the suffix (export.gguf).
- completion (Python / 34B vocabulary): the prompt as is.

A byte-level BPE base (SmolLM2, Llama 3-style; no tokenizer.model) has its own kinds, the FIM tokens first:

- infill_bpe (the <PRE> <SUF> <MID> <EOT> tokens codellama_hf.tokenizer.bpe adds): `<PRE>{prefix}<SUF>{suffix}<MID>`,
  the toolkit's PSM layout for BPE (no SentencePiece space: byte-level BPE adds none), stopping at <EOT> and EOS.
- chatml (a chat template speaking <|im_start|>, as SmolLM2-Instruct's): ChatML turns, stopping at <|im_end|>.
- completion otherwise; any other chat template is refused rather than rendered in a format the model never saw.

The sentinels are written with their exact piece text ("▁<PRE>", U+2581), so the runner matches them as special
tokens; the same text without "▁" would be tokenized as ordinary characters.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

INSTRUCT_TEMPLATE = (
    "{{- $first := true }}"
    "{{- range .Messages }}"
    '{{- if eq .Role "user" }}{{ if not $first }}<s>{{ end }}[INST] '
    "{{ if and $first $.System }}<<SYS>>\n{{ $.System }}\n<</SYS>>\n\n{{ end }}"
    "{{ .Content }} [/INST]{{ $first = false }}"
    '{{- else if eq .Role "assistant" }} {{ .Content }} </s>'
    "{{- end }}"
    "{{- end }}"
)
INFILL_TEMPLATE = (
    "{{- if .Suffix }}\u2581<PRE>{{ .Prompt }}\u2581<SUF>{{ .Suffix }}\u2581<MID>{{- else }}{{ .Prompt }}{{- end }}"
)
COMPLETION_TEMPLATE = "{{ .Prompt }}"
BPE_INFILL_TEMPLATE = "{{- if .Suffix }}<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>{{- else }}{{ .Prompt }}{{- end }}"
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)

STOPS = {
    "instruct": ["[INST]", "[/INST]", "</s>"],
    "infill": ["<EOT>", "</s>"],
    "completion": ["</s>"],
    "infill_bpe": ["<EOT>"],
    "chatml": ["<|im_end|>"],
}
TEMPLATES = {
    "instruct": INSTRUCT_TEMPLATE,
    "infill": INFILL_TEMPLATE,
    "completion": COMPLETION_TEMPLATE,
    "infill_bpe": BPE_INFILL_TEMPLATE,
    "chatml": CHATML_TEMPLATE,
}


def model_kind(folder: str | os.PathLike) -> str:
    """instruct, infill or completion, from the folder's tokenizer files."""
    from codellama_hf.export.gguf import infilling_ids
    from codellama_hf.tokenizer import load_sp_model

    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if not (folder / "tokenizer.model").is_file() and (folder / "tokenizer.json").is_file():
        return _bpe_kind(folder)
    if config.get("chat_template") or (folder / "chat_template.jinja").is_file():
        return "instruct"
    return "infill" if infilling_ids(load_sp_model(folder / "tokenizer.model")) else "completion"


def _bpe_kind(folder: Path) -> str:
    from codellama_hf.export.gguf import chat_template
    from codellama_hf.export.gguf_bpe import bpe_fim_ids
    from codellama_hf.export.model_folder import byte_level_tokenizer

    tokenizer = byte_level_tokenizer(folder)
    if tokenizer is None:
        raise ValueError(f"{folder}: neither tokenizer.model (SentencePiece) nor a byte-level BPE tokenizer.json")
    if bpe_fim_ids(tokenizer) is not None:
        return "infill_bpe"
    template = chat_template(folder)
    if template is None:
        return "completion"
    if "<|im_start|>" in template:
        return "chatml"
    raise ValueError(
        f"{folder}: its chat template is neither Code Llama's nor ChatML; write the Ollama TEMPLATE by hand"
    )


def _extra_stops(folder: Path, kind: str) -> list[str]:
    """EOS of a BPE base (SmolLM2 <|im_end|>, Llama 3 <|end_of_text|>) also ends an infill."""
    if kind != "infill_bpe":
        return []
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(folder).eos_token
    return [eos] if eos and eos not in STOPS[kind] else []


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError('an Ollama TEMPLATE cannot contain """')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, kind: str, *, context: int, extra_stops: tuple[str, ...] = ()) -> str:
    """The Modelfile for a GGUF in the same folder."""
    if kind not in TEMPLATES:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(TEMPLATES)}")
    lines = [
        f"# Code Llama ({kind}) exported by codellama-hf; create with: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_quote(TEMPLATES[kind])}",
        f"PARAMETER num_ctx {min(context, 16384)}",
        *(f'PARAMETER stop "{stop}"' for stop in (*STOPS[kind], *extra_stops)),
    ]
    return "\n".join(lines) + "\n"


def write_modelfile(model_dir: str | os.PathLike, gguf_file: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `Modelfile` next to `gguf_file` for the model in `model_dir` (by rename: never half-written)."""
    from codellama_hf.io import read_json_object, refuse_existing, write_text

    gguf_file = Path(gguf_file)
    path = gguf_file.parent / "Modelfile"
    refuse_existing(path, overwrite)
    config = read_json_object(Path(model_dir) / "config.json", "the model config")
    kind = model_kind(model_dir)
    context = config.get("max_position_embeddings", 4096)
    text = modelfile_text(
        gguf_file.name, kind, context=context, extra_stops=tuple(_extra_stops(Path(model_dir), kind))
    )
    return write_text(path, text)

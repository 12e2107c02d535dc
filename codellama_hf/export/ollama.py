"""An Ollama Modelfile beside a GGUF: the model's prompt template and stop strings.

Three kinds, read from the model folder:

- instruct (a chat template in the tokenizer config): Meta's `chat_completion` format (codellama_hf.chat),
  `[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] ...`.
- infill (the ▁<PRE> ▁<SUF> ▁<MID> ▁<EOT> pieces, 7B/13B): a request with a suffix renders
  `▁<PRE>{prefix}▁<SUF>{suffix}▁<MID>`; without one, plain completion. Ollama's runner tokenizes like llama.cpp:
  raw text after a special token gets SentencePiece's implicit space, which gives Meta's `encode(prefix)` after
  ▁<PRE>, and after ▁<SUF> the same extra 29871 that llama.cpp's /infill puts before the suffix (export.gguf).
- completion (Python / 34B vocabulary): the prompt as is.

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

STOPS = {
    "instruct": ["[INST]", "[/INST]", "</s>"],
    "infill": ["<EOT>", "</s>"],
    "completion": ["</s>"],
}
TEMPLATES = {"instruct": INSTRUCT_TEMPLATE, "infill": INFILL_TEMPLATE, "completion": COMPLETION_TEMPLATE}


def model_kind(folder: str | os.PathLike) -> str:
    """instruct, infill or completion, from the folder's tokenizer files."""
    from codellama_hf.export.gguf import infilling_ids
    from codellama_hf.tokenizer import load_sp_model

    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if config.get("chat_template") or (folder / "chat_template.jinja").is_file():
        return "instruct"
    return "infill" if infilling_ids(load_sp_model(folder / "tokenizer.model")) else "completion"


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError('an Ollama TEMPLATE cannot contain """')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, kind: str, *, context: int) -> str:
    """The Modelfile for a GGUF in the same folder."""
    if kind not in TEMPLATES:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(TEMPLATES)}")
    lines = [
        f"# Code Llama ({kind}) exported by codellama-hf; create with: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_quote(TEMPLATES[kind])}",
        f"PARAMETER num_ctx {min(context, 16384)}",
        *(f'PARAMETER stop "{stop}"' for stop in STOPS[kind]),
    ]
    return "\n".join(lines) + "\n"


def write_modelfile(model_dir: str | os.PathLike, gguf_file: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `Modelfile` next to `gguf_file` for the model in `model_dir` (by rename: never half-written)."""
    from codellama_hf.io import read_json_object, refuse_existing, write_text

    gguf_file = Path(gguf_file)
    path = gguf_file.parent / "Modelfile"
    refuse_existing(path, overwrite)
    config = read_json_object(Path(model_dir) / "config.json", "the model config")
    text = modelfile_text(gguf_file.name, model_kind(model_dir), context=config.get("max_position_embeddings", 4096))
    return write_text(path, text)

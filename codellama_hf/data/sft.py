"""The instruct stage's data: dialogs (plus rehearsal documents) as rows of the one streaming path.

Dialogs are JSON lists of {role, content} turns in a `text` column, tagged `component: instruct`; they are encoded
exactly as Meta's `chat_completion` (chat.py) with labels on the assistant's answers only. Rehearsal documents (the
other components of the `instruct_rehearsal` mixture: code 6%, natural language 2%, paper §2.5) are plain
documents with the loss on every token. Both go through `stream.PackedStream` like every stage's data, so the
instruct stage streams, shards and resumes exactly as the others do.

The code rehearsal documents (components in CODE_REHEARSAL) take fill-in-the-middle at `instruct_fim_rate`, with
the code stage's rule and keys (fim.py: same split, PSM/SPM share, decisions by seed, document and epoch): Meta's
7B/13B Instruct models still infill (model card), so their instruct data keeps rehearsing the objective. Dialogs
and natural language are never transformed. A row of 16 tokens with a dialog (`q` question, `a` answer learned),
a FIM-transformed code document in PSM order (`s` <s>; `P` `S` `M` `E` the ▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>
sentinels; `p` prefix, `x` suffix, `m` middle) and padding `.`:

    input_ids     q q q a a a s P p S x M m E . .
    position_ids  0 1 2 3 4 5 0 1 2 3 4 5 6 7 0 1
    labels        - - - a a a - P p S x M m E - -      (- is -100)

The FIM document learns every token after its first, sentinels included, exactly as in the code stage.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from codellama_hf.chat import encode_dialogs, exchanges
from codellama_hf.data.fim import FIMConfig
from codellama_hf.data.packing import Example
from codellama_hf.data.stream import DocumentEncoder
from codellama_hf.selfinstruct.prompts import solution_message

logger = logging.getLogger(__name__)

INSTRUCT = "instruct"  # the mixture component the dialogs fill: the mixture's `reserved` share
STDLIB = "stdlib"  # instruct source keyword: offline demo dialogs from the Python standard library
# Mixture components whose documents are code (the presets' names, corpus/mixture.py): the FIM candidates
CODE_REHEARSAL = ("code", "python")


def stdlib_dialogs(max_dialogs: int = 2000):
    """Offline demo dialogs for the tiny preset: documented public functions of this machine's standard library,
    asked for by signature and docstring, answered with their source. Real text and code, NOT the paper's data."""
    import sysconfig

    import datasets

    rows = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = _LINE.findall(source)
        for node in tree.body:
            doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
            code = _source_segment(lines, node) if doc else None
            if not doc or node.name.startswith("_") or not code or len(code) > 1500:
                continue
            request = " ".join(doc.split("\n\n")[0].split())
            signature = f"{node.name}({ast.unparse(node.args)})"
            rows.append(
                [
                    {"role": "user", "content": f"Write a Python function `{signature}`: {request}"},
                    {"role": "assistant", "content": solution_message(code)},
                ]
            )
            if len(rows) == max_dialogs:
                break
        if len(rows) == max_dialogs:
            break
    return datasets.Dataset.from_dict({"text": [json.dumps(r, ensure_ascii=False) for r in rows]})


# Lines as ast.get_source_segment splits them (\r\n, \r or \n; not form feeds), split once per file: that
# function splits the whole file again on every call, which made the stdlib dialogs take ~12 s instead of ~1 s.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _source_segment(lines: list[str], node: ast.AST) -> str:
    """ast.get_source_segment(source, node) from the source's lines (columns are UTF-8 byte offsets)."""
    first, last = node.lineno - 1, node.end_lineno - 1
    if first == last:
        return lines[first].encode()[node.col_offset : node.end_col_offset].decode()
    head = lines[first].encode()[node.col_offset :].decode()
    tail = lines[last].encode()[: node.end_col_offset].decode()
    return "".join([head, *lines[first + 1 : last], tail])


def load_dialogs(sources: Sequence[str], split: str = "train"):
    """Instruct dialogs from `datasets` with a `messages` column (self-instruct output, JSON/JSONL/Parquet files,
    saved datasets or datasets names), or "stdlib": one `text` column of JSON dialogs, checked when tokenized."""
    import datasets

    parts = []
    for spec in [sources] if isinstance(sources, str) else sources:
        spec = str(spec)
        path = Path(spec).expanduser()
        if spec == STDLIB:
            parts.append(stdlib_dialogs())
            continue
        if path.is_dir() and any((path / m).exists() for m in ("dataset_info.json", "dataset_dict.json")):
            data = datasets.load_from_disk(str(path))
            data = data[split] if isinstance(data, datasets.DatasetDict) else data
        elif path.is_file():
            builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
            if builder is None:
                raise ValueError(f"instruct source {spec}: use a .jsonl, .json or .parquet file or a saved dataset")
            data = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            try:
                data = datasets.load_dataset(spec, split=split)
            except Exception as err:  # datasets raises many kinds: name the source and the reason
                raise FileNotFoundError(
                    f"instruct source {spec!r}: not a file, saved dataset or loadable datasets "
                    f"name ({type(err).__name__}: {err})"
                ) from None
        if "messages" not in data.column_names:
            raise ValueError(
                f"instruct source {spec}: needs a 'messages' column of {{role, content}} turns (columns: "
                f"{data.column_names})"
            )
        parts.append(
            data.map(
                lambda m: {"text": json.dumps(m, ensure_ascii=False, default=str)},
                input_columns="messages",
                remove_columns=data.column_names,
                desc=f"reading {spec}",
            )
        )
    if not parts:
        raise ValueError(
            "no instruct data: set mixture_sources: {instruct: [...]} (a self-instruct dataset, "
            "messages files, or 'stdlib' for the offline demo)"
        )
    return datasets.concatenate_datasets(parts)


def _label_spans(labels: Sequence[int]) -> list[int]:
    """[start, end, start, end, ...] of the runs of positions that carry a label."""
    import numpy as np

    from codellama_hf.data.packing import IGNORE_INDEX

    mask = np.concatenate([[False], np.asarray(labels) != IGNORE_INDEX, [False]])
    return np.flatnonzero(mask[1:] != mask[:-1]).tolist()


def encode_dialog_texts(texts: Sequence[str], tokenizer, seq_len: int) -> tuple[list[Example], Counter]:
    """JSON dialogs -> examples with labels on the answers. Invalid dialogs, dialogs without an answer and dialogs
    longer than seq_len are skipped and counted; the first invalid one is logged."""
    counts, first_error, dialogs = Counter(), None, []
    for text in texts:
        try:
            dialog = json.loads(text)
            turns = exchanges(dialog)
        except (ValueError, TypeError) as err:
            counts["skipped: invalid dialog"] += 1
            first_error = first_error or err
            continue
        if turns[-1][1] is None:
            if len(turns) == 1:
                counts["skipped: no assistant answer"] += 1
                continue
            dialog = dialog[:-1]  # a trailing question has nothing to learn from
        dialogs.append(dialog)
    if first_error:
        logger.warning("skipping invalid instruct dialogs (first: %s)", first_error)
    examples = []
    for ids, labels in encode_dialogs(tokenizer, dialogs):
        if len(ids) > seq_len:
            counts[f"skipped: dialog longer than seq_len {seq_len}"] += 1
        else:
            examples.append(Example(ids, _label_spans(labels)))
            counts["dialog"] += 1
    return examples, counts


class DialogMixtureEncoder:
    """Rows of the instruct table -> examples: dialogs (component `instruct`) and rehearsal documents (others); the
    code rehearsal documents are FIM-transformed at `fim`'s rate (module docstring)."""

    def __init__(self, tokenizer, seq_len: int, fim: FIMConfig | None = None):
        self.tokenizer, self.seq_len = tokenizer, seq_len
        self.documents = DocumentEncoder(tokenizer, seq_len, fim=fim, fim_components=CODE_REHEARSAL)

    def __call__(
        self, texts: Sequence, components: Sequence | None, epoch: int, rows: Sequence[int] | None = None
    ) -> tuple[list[Example], Counter]:
        components = components or [INSTRUCT] * len(texts)
        dialog_at = [i for i, c in enumerate(components) if c == INSTRUCT]
        document_at = [i for i, c in enumerate(components) if c != INSTRUCT]
        dialogs, counts = encode_dialog_texts([texts[i] for i in dialog_at], self.tokenizer, self.seq_len)
        document_rows = None if rows is None else [rows[i] for i in document_at]
        documents, more = self.documents(
            [texts[i] for i in document_at], [components[i] for i in document_at], epoch, document_rows
        )
        counts.update(more)
        return dialogs + documents, counts

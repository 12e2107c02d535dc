"""Files shared by every step: outputs that appear whole or not at all, JSON/YAML read with clear errors, dtype names.

Every file or folder the toolkit writes is built under a temporary sibling name and renamed on success
(`os.replace` is atomic within a file system on POSIX and Windows), so an interrupted run never leaves an output that
looks finished. Readers name the file and what it should be when it is missing or malformed. torch is imported only
by `torch_dtype`, so importing this module stays cheap for the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

DTYPE_NAMES = ("bfloat16", "float16", "float32")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def _partial_name(path: Path) -> Path:
    """A hidden sibling, unique per process, that keeps the suffix (writers such as savefig read the format there)."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def refuse_existing(output_dir: str | os.PathLike, overwrite: bool) -> None:
    if Path(output_dir).exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists; choose another output folder or pass --overwrite")


@contextlib.contextmanager
def atomic_dir(output_dir: str | os.PathLike, *, overwrite: bool = False, shared: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes `output_dir` only if the block succeeds.

    overwrite: replace an existing `output_dir` (only once the new one is complete).
    shared: a cache that other processes may build at the same moment; whoever finishes first wins and the others
    drop their copy (it holds the same thing).
    """
    output_dir = Path(output_dir)
    if not shared:
        refuse_existing(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(output_dir)
    tmp.mkdir()
    try:
        yield tmp
        if output_dir.exists() and shared:
            shutil.rmtree(tmp)
        elif output_dir.exists():
            old = tmp.with_name(tmp.name + "-old")
            os.rename(output_dir, old)
            os.rename(tmp, output_dir)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            try:
                os.rename(tmp, output_dir)
            except OSError:
                if not (shared and output_dir.exists()):  # not merely another process finishing first
                    raise
                shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, value, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write `value` as JSON atomically; values JSON does not know (paths, dtypes) are written as their str()."""
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=str)
    return write_text(path, text + "\n" if indent is not None else text)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write one JSON object per line, atomically."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return Path(path)


def read_json_object(path: str | os.PathLike, what: str = "") -> dict:
    """A JSON object from `path`; a missing, invalid or non-object file is an error naming it (and what it is)."""
    about = f" ({what})" if what else ""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found{about}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object{about}")
    return value


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict:
    """A YAML mapping from `path` (an empty file is {}); a missing, invalid or non-mapping file is an error."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} (the file does not exist)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {what} must be a YAML mapping of field: value")
    return data


def changed_settings(saved: dict, now: dict, *, ignore: Iterable[str] = ()) -> str:
    """What differs between the settings a run folder was made with and this run's, or "" when nothing does.

    Runs that continue where they stopped (stages, corpus builds, self-instruct, experiments) refuse other settings;
    the message names each field that changed, nested ones by their path ("data.seq_len: 4096 -> 8192"). `now` is
    compared as it would be read back from JSON (tuples as lists, paths as strings).
    """
    before, after = _flatten(saved), _flatten(json.loads(json.dumps(now, default=str)))
    skip = set(ignore)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and k not in skip)
    return "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed)


def _flatten(value, prefix: str = "") -> dict:
    """{"data": {"seq_len": 1}} -> {"data.seq_len": 1}; an empty mapping stays a value, so {} differs from absent."""
    if not isinstance(value, dict) or (prefix and not value):
        return {prefix: value}
    flat = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def torch_dtype(value, *, auto=None):
    """A torch.dtype from its name ("bfloat16", "float16", "float32" or bf16/fp16/half/fp32/float) or itself.

    "auto" returns `auto` (pass "auto" to keep it for `from_pretrained`, or a device-dependent choice); any other name
    is an error that lists the accepted ones.
    """
    import torch

    name = str(value).lower().removeprefix("torch.")
    if name == "auto":
        if auto is None:
            raise ValueError(f"dtype={value!r} is not accepted here: use {', '.join(DTYPE_NAMES)}")
        return auto
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype={value!r}: use auto, {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)

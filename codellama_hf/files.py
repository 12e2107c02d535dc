"""Files shared by every step: output folders that appear whole or not at all, JSON read with clear errors.

An interrupted conversion or tokenizer build must never leave a folder that looks finished: it is built in a
temporary sibling and renamed on success.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path


def refuse_existing(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists; choose another output folder or pass --overwrite")


@contextlib.contextmanager
def atomic_dir(output_dir: str | os.PathLike, *, overwrite: bool = False):
    """Yield a temporary sibling folder that becomes `output_dir` only if the block succeeds."""
    output_dir = Path(output_dir)
    refuse_existing(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        if output_dir.exists():
            old = tmp.with_name(tmp.name + "-old")
            os.rename(output_dir, old)
            os.rename(tmp, output_dir)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.rename(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json_object(path: Path, what: str = "") -> dict:
    """A JSON object from `path`; a missing, invalid or non-object file is an error naming it (and what it is)."""
    about = f" ({what})" if what else ""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found{about}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object{about}")
    return value

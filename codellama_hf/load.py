"""`from codellama_hf import load`: a Code Llama model ready to complete, infill and chat, in one call.

    model = load("codellama/CodeLlama-7b-hf")             # Hub id, through the HF cache (honours HF_HUB_OFFLINE)
    model = load("CodeLlama-7b-Instruct", quantization="4bit")   # a family name
    model = load("outputs/7b/lcft")                       # a local HF folder (e.g. a stage's output)
    model = load("/data/CodeLlama-7b")                    # Meta's consolidated.*.pth folder, converted once
    model.generate("def fib(n):")                         # -> the completion
    model.infill("def f(x):\\n    ", "\\n    return y")   # -> the middle (Meta's exact prompt, stops at ▁<EOT>)
    model.chat([{"role": "user", "content": "Write a quicksort"}])   # Instruct models

Which family member can infill or chat is codellama_hf.family's; generation itself is codellama_hf.generation's;
this module finds, loads and wraps the model.

Importing this module is cheap (no torch): `import codellama_hf` exports `load` from here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codellama_hf.family import FAMILY, Variant, variant_from_name
from codellama_hf.io import torch_dtype

logger = logging.getLogger(__name__)

# Files a model (or adapter) needs from a Hub repo: safetensors weights, configs, tokenizer, chat template, lineage
# and evaluation JSON; not the pickled .bin copies many repos also hold.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------------------------------------------
# Finding the files
# ---------------------------------------------------------------------------------------------------------------


def _is_meta_folder(folder: Path) -> bool:
    return (folder / "params.json").is_file() and any(folder.glob("consolidated.*.pth"))


def converted_meta_folder(folder: Path) -> Path:
    """The HF conversion of a Meta checkpoint folder, made once into the toolkit cache (keyed by the files)."""
    from codellama_hf.assets import cache_dir

    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    key = hashlib.sha256(repr((str(folder.resolve()), stats)).encode()).hexdigest()[:16]
    target = cache_dir() / "converted" / f"{folder.name}-{key}"
    if (target / "config.json").is_file():
        return target
    from codellama_hf.convert import meta_to_hf

    logger.warning("converting Meta checkpoint %s to HF format in %s (once; later loads reuse it)", folder, target)
    try:
        meta_to_hf(folder, target, dtype="auto")
    except FileExistsError:  # another process converted it meanwhile
        pass
    except OSError as err:
        raise RuntimeError(
            f"converting Meta checkpoint {folder} into {target} failed ({err}); convert it yourself "
            f"with `codellama-hf convert meta-to-hf {folder} OUT` and load OUT"
        ) from None
    return target


def _cache_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cached_revisions(repo_id: str) -> list[str]:
    from huggingface_hub.file_download import repo_folder_name

    refs = _cache_root() / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs"
    return sorted(p.name for p in refs.iterdir()) if refs.is_dir() else []


def hub_snapshot(repo_id: str, *, revision: str | None = None) -> Path:
    """Local folder of a Hub repo at `revision`: downloaded into the HF cache, or found there when offline."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    shown = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except HFValidationError as err:
        raise ValueError(f"{repo_id!r} is neither a local folder nor a valid Hub model id ({err})") from None
    except RevisionNotFoundError:
        raise ValueError(
            f"{repo_id} has no revision {revision!r} on {constants.ENDPOINT}: pass an existing branch, "
            "tag or commit (or leave revision unset for main)"
        ) from None
    except GatedRepoError:
        raise PermissionError(
            f"{repo_id} is gated: accept its licence on the Hub and log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{repo_id}: no such model on {constants.ENDPOINT}, nor a local folder (a private "
            "repo needs a token: `hf auth login` or HF_TOKEN)"
        ) from None
    except IncompleteSnapshotError as err:  # its message names the missing files and what to do
        raise FileNotFoundError(str(err)) from None
    except LocalEntryNotFoundError:
        cached = _cached_revisions(repo_id)
        where = f"the HF cache ({_cache_root()})"
        if cached and revision:
            detail = f"revision {revision!r} of {repo_id} is not in {where}; cached: {', '.join(cached)}"
        else:
            detail = f"{shown} is not in {where}"
        if constants.is_offline_mode():
            raise FileNotFoundError(
                f"{detail}, and HF_HUB_OFFLINE=1 forbids downloading it: download it once while "
                f"online (`hf download {repo_id}`) or unset HF_HUB_OFFLINE"
            ) from None
        raise FileNotFoundError(f"{detail}, and the Hub ({constants.ENDPOINT}) cannot be reached") from None


@dataclass(frozen=True)
class Source:
    """Where a model's files are, and what it was asked for as."""

    folder: Path
    name: str
    variant: Variant | None


def resolve(name_or_path: str | os.PathLike, *, revision: str | None = None) -> Source:
    """A local HF folder, a Meta folder (converted once), a family name or a Hub id -> a local HF folder."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub models; {path} is a local folder")
        if not path.is_dir():
            raise ValueError(f"{path} is a file; pass the model folder")
        variant = variant_from_name(path.resolve().name)
        if (path / "config.json").is_file():
            return Source(path, text, variant)
        if _is_meta_folder(path):
            return Source(converted_meta_folder(path), text, variant)
        if (path / "adapter_config.json").is_file():
            raise ValueError(f"{path} is a PEFT adapter, not a model: load(BASE_MODEL, adapter={str(path)!r})")
        raise FileNotFoundError(
            f"{path}: not a model folder (no config.json, nor Meta's consolidated.*.pth with params.json)"
        )
    variant = variant_from_name(text)
    if "/" not in text and variant is not None and variant.hub_id:
        text = variant.hub_id
    elif not _HUB_ID.match(text):
        raise FileNotFoundError(
            f"{text}: no such folder, and not a Hub id (namespace/name) or a family name "
            f"({', '.join(v.name for v in FAMILY[:3])}, ...)"
        )
    folder = hub_snapshot(text, revision=revision)
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{text} has no safetensors weights (codellama_hf does not load pickled .bin "
            "files); use a repository with model*.safetensors"
        )
    return Source(folder, text, variant)


def _adapter_folder(adapter: str | os.PathLike) -> Path:
    path = Path(adapter).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.match(str(adapter)):
        raise FileNotFoundError(f"adapter {adapter}: no such folder, and not a Hub id")
    return hub_snapshot(str(adapter))


# ---------------------------------------------------------------------------------------------------------------
# The loaded model
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CodeLlama:
    """A loaded model and tokenizer; generation goes through codellama_hf.generation."""

    model: Any
    tokenizer: Any
    source: str
    variant: Variant | None = None
    quantization: str | None = None
    adapter: str | None = None

    @property
    def can_infill(self) -> bool:
        """The tokenizer has the four infilling pieces (Meta's, or a BPE base's FIM tokens) and the model has
        embeddings for them."""
        from codellama_hf.tokenizer import infill_ids, supports_infilling

        if not supports_infilling(self.tokenizer):
            return False
        ids = infill_ids(self.tokenizer)
        return max(ids.prefix, ids.suffix, ids.middle, ids.eot) < self.model.get_input_embeddings().num_embeddings

    @property
    def can_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def __repr__(self) -> str:
        facts = [f"source={self.source!r}"]
        if self.variant:
            facts.append(f"variant={self.variant.name}")
        facts += [f"infill={self.can_infill}", f"chat={self.can_chat}"]
        if self.quantization:
            facts.append(f"quantization={self.quantization}")
        if self.adapter:
            facts.append(f"adapter={self.adapter!r}")
        return f"CodeLlama({', '.join(facts)})"

    def generate(self, prompt: str | Sequence[str], *, max_new_tokens: int = 256, **kwargs):
        """Completion(s) of `prompt` (a string -> a string; a list -> a list). Keyword arguments (do_sample,
        temperature, top_p, n, stop, batch_size, seed) are codellama_hf.generation.generate's; with n > 1 each
        prompt gives a list of n completions."""
        from codellama_hf.generation import generate

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        out = generate(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, **kwargs)
        out = [o[0] if kwargs.get("n", 1) == 1 else o for o in out]
        return out[0] if isinstance(prompt, str) else out

    def infill(
        self,
        prefix: str | Sequence[str],
        suffix: str | Sequence[str],
        *,
        suffix_first: bool = False,
        max_new_tokens: int = 128,
        **kwargs,
    ):
        """The code between `prefix` and `suffix` (Meta's PSM prompt, or SPM with `suffix_first`); strings or lists."""
        from codellama_hf.generation import infill

        if self.variant is not None and not self.variant.infilling:
            raise ValueError(
                f"{self.variant.name} ({self.source}) cannot infill: Code Llama - Python and all 34B "
                "models were trained without fill-in-the-middle. Use CodeLlama-7b/13b or their "
                "Instruct variants"
            )
        if not self.can_infill:
            raise ValueError(
                f"{self.source} cannot infill: its tokenizer or embeddings lack Code Llama's infilling "
                "pieces (▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>), as in Python and 34B models, or a byte-level BPE base's FIM "
                "tokens (<PRE> <SUF> <MID> <EOT>: codellama-hf tokenizer --add-fim)"
            )
        single = isinstance(prefix, str)
        prefixes, suffixes = ([prefix], [suffix]) if single else (list(prefix), list(suffix))
        out = infill(
            self.model,
            self.tokenizer,
            prefixes,
            suffixes,
            suffix_first=suffix_first,
            max_new_tokens=max_new_tokens,
            **kwargs,
        )
        return out[0] if single else out

    def chat(self, messages: Sequence[Mapping[str, str]], *, max_new_tokens: int = 512, **kwargs) -> str:
        """The assistant's answer to a dialog (system?, user, assistant, ..., user), in the tokenizer's chat format."""
        if not self.can_chat:
            raise ValueError(
                f"{self.source} has no chat template: only Code Llama - Instruct models chat (their "
                "tokenizer carries the [INST] template). Use generate() for completion"
            )
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        bos = self.tokenizer.bos_token
        if bos and text.startswith(bos):
            text = text[len(bos) :]  # generate() adds BOS itself, as Meta's encode(..., bos=True)
        answer = self.generate(text, max_new_tokens=max_new_tokens, **kwargs)
        return answer.removeprefix(" ")  # Meta's decode drops the joining space


def _torch_dtype(dtype, device_map):
    import torch

    if dtype == "auto":
        on_gpu = torch.cuda.is_available() and device_map not in ("cpu", {"": "cpu"})
        return torch.bfloat16 if on_gpu else torch.float32
    return torch_dtype(dtype)


def _check_cpu_4bit_shapes(model, name: str) -> None:
    """bitsandbytes' packed CPU kernel (used on CPUs with AVX512-BF16) needs output sizes divisible by 32 and input
    sizes divisible by the quantization block (64).

    Every released shape qualifies (4096, 5120, 8192; 11008, 13824, 22016); other shapes would fail with an
    AssertionError deep in the first forward pass, so say it here.
    """
    odd = sorted(
        {
            (n.rsplit(".", 1)[-1], m.in_features, m.out_features)
            for n, m in model.named_modules()
            if getattr(m, "support_avx512bf16_for_cpu", False)
            and m.weight.device.type == "cpu"
            and (m.out_features % 32 or m.in_features % m.weight.quant_state.blocksize)
        }
    )
    if odd:
        raise ValueError(
            f"{name} cannot run 4-bit on this CPU: bitsandbytes' CPU kernel needs linear layers with "
            f"outputs divisible by 32 and inputs by 64, and (layer, in, out) {odd} are not; use "
            "quantization='8bit' or none"
        )


def load(
    name_or_path: str | os.PathLike,
    *,
    dtype="auto",
    device_map=None,
    quantization: str | None = None,
    adapter: str | os.PathLike | None = None,
    revision: str | None = None,
) -> CodeLlama:
    """Load a Code Llama model (Hub id, family name, HF folder or Meta folder) with its tokenizer.

    dtype: "auto" (bfloat16 on GPU, float32 on CPU), a torch dtype or its name. device_map: default the GPU when
    there is one, else the CPU; "auto" spreads a large model over devices. quantization: None, "4bit" (NF4) or
    "8bit" with bitsandbytes. adapter: a LoRA adapter folder or Hub id trained on this model (checked).
    revision: branch, tag or commit of a Hub model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from codellama_hf.adapters import AdapterArguments, apply_trained_config, load_adapter, read_adapter
    from codellama_hf.generation import attention_implementation

    if quantization not in (None, "4bit", "8bit"):
        raise ValueError(f"quantization={quantization!r}: use None, '4bit' or '8bit'")
    source = resolve(name_or_path, revision=revision)
    device_map = device_map or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _torch_dtype(dtype, device_map)
    config = AutoConfig.from_pretrained(source.folder)
    adapter_folder, metadata = None, None
    if adapter is not None:
        adapter_folder = _adapter_folder(adapter)
        _, metadata = read_adapter(adapter_folder)
        apply_trained_config(config, metadata)  # e.g. the theta an LCFT adapter was trained with
    kwargs = {}
    if quantization:
        options = AdapterArguments(
            use_peft=True, load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit"
        )
        kwargs["quantization_config"] = options.quantization_config(torch_dtype)
    model = AutoModelForCausalLM.from_pretrained(
        source.folder,
        config=config,
        dtype=torch_dtype,
        device_map=device_map,
        attn_implementation=attention_implementation(),
        **kwargs,
    )
    if quantization == "4bit":
        _check_cpu_4bit_shapes(model, source.name)
    tokenizer_folder = source.folder
    if adapter_folder is not None:
        model = load_adapter(model, adapter_folder, base_name=source.name)
        if (adapter_folder / "tokenizer_config.json").is_file():
            tokenizer_folder = adapter_folder
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    return CodeLlama(
        model=model.eval(),
        tokenizer=tokenizer,
        source=source.name,
        variant=source.variant,
        quantization=quantization,
        adapter=str(adapter) if adapter is not None else None,
    )

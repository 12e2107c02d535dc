"""The Code Llama family: 7B/13B/34B x base/Python/Instruct, named as Meta names them.

Only the 7B and 13B base and Instruct models can infill (the list in the README of Meta's codellama repository),
so only they have the 16 infilling pieces (vocabulary 32,016); the Python models and the 34B models keep Llama 2's
32,000. Meta publishes HF-format copies under the `codellama` organisation on the Hub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("base", "python", "instruct")
META_SIZES = ("7b", "13b", "34b")
HUB_NAMESPACE = "codellama"  # where Meta's HF-format models live (also mirrored under meta-llama/)
_NAME = re.compile(r"^codellama-(?P<size>7b|13b|34b|tiny)(?:-(?P<kind>python|instruct))?(?:-hf)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Variant:
    """One member of the Code Llama family; `tiny` is this toolkit's CPU preset, named like the others."""

    size: str
    kind: str

    def __post_init__(self):
        if self.size not in (*META_SIZES, "tiny"):
            raise ValueError(f"unknown Code Llama size {self.size!r}; choose one of {', '.join(META_SIZES)} (or tiny)")
        if self.kind not in KINDS:
            raise ValueError(f"unknown Code Llama variant {self.kind!r}; choose one of {', '.join(KINDS)}")

    @property
    def name(self) -> str:
        """Meta's name: CodeLlama-7b, CodeLlama-7b-Python, CodeLlama-7b-Instruct."""
        return f"CodeLlama-{self.size}" + ("" if self.kind == "base" else f"-{self.kind.capitalize()}")

    @property
    def slot(self) -> str:
        """Short form used on command lines: 7b, 7b-python, 7b-instruct."""
        return self.size if self.kind == "base" else f"{self.size}-{self.kind}"

    @property
    def title(self) -> str:
        """How Meta's model card names it: Code Llama - Python 7B."""
        kind = {"base": "", "python": " - Python", "instruct": " - Instruct"}[self.kind]
        return f"Code Llama{kind} {self.size.upper() if self.size != 'tiny' else '(tiny)'}"

    @property
    def infilling(self) -> bool:
        """Trained with fill-in-the-middle: 7B/13B base and Instruct (and the tiny preset likewise)."""
        return self.kind != "python" and self.size != "34b"

    @property
    def chat(self) -> bool:
        return self.kind == "instruct"

    @property
    def vocab_size(self) -> int | None:
        if self.size == "tiny":
            return None
        return 32016 if self.infilling else 32000

    @property
    def hub_id(self) -> str | None:
        """Meta's HF-format repository (None for the tiny preset, which only exists where you push it)."""
        return None if self.size == "tiny" else f"{HUB_NAMESPACE}/{self.name}-hf"


FAMILY: tuple[Variant, ...] = tuple(Variant(size, kind) for size in META_SIZES for kind in KINDS)


def variant_from_name(name: str) -> Variant | None:
    """The family member a model or repo name refers to (CodeLlama-7b-Python, org/CodeLlama-13b-Instruct-hf)."""
    match = _NAME.match(str(name).rstrip("/").rsplit("/", 1)[-1])
    return Variant(match["size"].lower(), (match["kind"] or "base").lower()) if match else None


def parse_slot(slot: str) -> Variant:
    """`7b`, `7b-python`, `13b-instruct`, `tiny` ... -> Variant (clear error otherwise)."""
    size, _, kind = slot.lower().partition("-")
    try:
        return Variant(size, kind or "base")
    except ValueError as err:
        raise ValueError(f"{slot!r}: {err} (family slots look like 7b, 7b-python, 13b-instruct)") from None

"""Small synthetic multi-file Python repositories for cross-file infilling at toy scale, generated
deterministically from (seed, split, index).

Real repositories' cross-file tasks (evaluation/crossfile.py on standard-library packages) need thousands of tokens
of context, beyond what a tiny model trained at a few hundred tokens can use; these fit in about 300 tokens of the
tiny tokenizer. The repository-level FIM experiment trains and scores on them, and the miniature's quick
evaluations score on them.

Each repository is one package of three files:

    <repo>/<pkg>/__init__.py        empty
    <repo>/<pkg>/<lib>.py           3-5 one-line functions and a constant, with names drawn per repository
    <repo>/<pkg>/<app>.py           `from <pkg> import <lib>`, then one call of each function, in definition order

    # <pkg>/<lib>.py                          # <pkg>/<app>.py
    LIMIT_AMBER = 42                          from orchard import rules
                                              ...
    def scale_copper(value):                  def run_ledger(value):
        return value * 3                          value = rules.scale_copper(value)
    ...                                           value = rules.shift_willow(value)   <- a cross-file task
                                                  ...
                                                  return min(value, rules.LIMIT_AMBER)

Function and constant names are verb_noun / NOUN_NOUN pairs from 48 x 48 words (2,304 of each kind), so the name
a line of <app>.py calls cannot be guessed from <app>.py: it is in <lib>.py, which repository-level samples put in
front of <app>.py and file-level samples do not. They are built to make the cross-file signal large and
unambiguous; they are not a stand-in for real code.
"""

from __future__ import annotations

import random
from pathlib import Path

from codellama_hf.io import atomic_dir

VERBS = (
    "scale shift clamp merge split parse render encode decode pack unpack score rank sort filter index fetch store "
    "load dump check count trim pad wrap fold round align blend carve drain stack queue route guard stamp sweep "
    "tally tune weigh mask mint patch probe prune seal sift snap"
).split()
NOUNS = (
    "amber copper willow harbor meadow canyon falcon garnet hazel ivory jasper kestrel lagoon marble nectar onyx "
    "pepper quartz raven saffron tundra umber violet walnut yarrow zephyr basil cedar delta ember fennel glacier "
    "heron indigo juniper lotus maple nutmeg orchid pebble quill river sable thistle ridge slate sorrel timber"
).split()
PACKAGES = "orchard ledger beacon quarry lantern compass harvest summit pylon atlas foundry signal".split()
LIBRARIES = "rules units rates codec steps tables limits ops helpers filters".split()
APPS = "app main pipeline runner service job".split()
OPERATIONS = ("value * {k}", "value + {k}", "value - {k}", "value // {k}", "value % {k} + {k}", "max(value, {k})")


def repository(seed: int, split: str, index: int) -> dict[str, str]:
    """{path: text} of one repository (paths relative to its folder)."""
    rng = random.Random(f"{seed}:{split}:{index}")
    pkg, lib, app = rng.choice(PACKAGES), rng.choice(LIBRARIES), rng.choice(APPS)
    pairs = rng.sample([(v, n) for v in VERBS for n in NOUNS], rng.randint(3, 5))
    functions = [f"{v}_{n}" for v, n in pairs]
    constant = f"{rng.choice(NOUNS).upper()}_{rng.choice(NOUNS).upper()}"
    lines = [f"{constant} = {rng.randint(10, 999)}\n"]
    for name in functions:
        body = rng.choice(OPERATIONS).format(k=rng.randint(2, 9))
        lines.append(f"\n\ndef {name}(value):\n    return {body}\n")
    entry = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"
    calls = "".join(f"    value = {lib}.{name}(value)\n" for name in functions)
    app_text = f"from {pkg} import {lib}\n\n\ndef {entry}(value):\n{calls}    return min(value, {lib}.{constant})\n"
    return {f"{pkg}/__init__.py": "", f"{pkg}/{lib}.py": "".join(lines), f"{pkg}/{app}.py": app_text}


def write_repositories(folder: str | Path, seed: int, split: str, count: int) -> list[Path]:
    """`count` repositories as folders repo_NNNN under `folder` (written atomically); their paths."""
    folder = Path(folder)
    if not folder.is_dir():
        with atomic_dir(folder) as staged:
            for index in range(count):
                for path, text in repository(seed, split, index).items():
                    target = staged / f"repo_{index:04d}" / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text, encoding="utf-8")
    roots = sorted(p for p in folder.iterdir() if p.is_dir())
    if len(roots) != count:
        raise ValueError(f"{folder} holds {len(roots)} repositories, not {count}: delete it to regenerate")
    return roots

"""A repository as a model sees it: its files in dependency order, each introduced by a plain-text path header.

Code Llama's 32016-token vocabulary has no repository or file-separator tokens (StarCoder2's `<repo_name>` /
`<file_sep>` are special tokens; llama.cpp falls back to plain text for models without them), so a file is
introduced by an ordinary comment line that the tokenizer already covers:

    # file: pkg/util.py        <- header(path), plain text, no new tokens
    <text of pkg/util.py>      <- always ends with "\\n"
    # file: pkg/core.py
    <text of pkg/core.py>

Files are ordered by dependency where imports resolve to files of the same repository (DeepSeek-Coder §2.2:
a file comes after the files it imports), path order otherwise; import cycles are broken by path order. Both the
repository-level training samples and the cross-file infilling evaluation use this module, so training and
evaluation see the same layout.
"""

from __future__ import annotations

import ast
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

HEADER = "# file: {path}\n"
SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".tox", ".venv", "node_modules"}


def header(path: str) -> str:
    """The plain-text line that introduces file `path` (a POSIX path relative to the repository)."""
    if "\n" in path or "\r" in path:
        raise ValueError(f"a repository path cannot contain a line break: {path!r}")
    return HEADER.format(path=path)


def render_file(path: str, text: str) -> str:
    """header(path) + text, ending with exactly one added newline when the text lacks one."""
    return header(path) + (text if text.endswith("\n") or not text else text + "\n")


@dataclass(frozen=True)
class SourceFile:
    path: str  # POSIX, relative to the repository root
    text: str


@dataclass
class Repository:
    name: str
    files: list[SourceFile]
    skipped: Counter = field(default_factory=Counter)

    def by_path(self) -> dict[str, SourceFile]:
        return {f.path: f for f in self.files}


def read_repository(
    root: str | os.PathLike, *, name: str | None = None, suffixes: Sequence[str] = (".py",)
) -> Repository:
    """The repository's source files (sorted by path). Unreadable or non-UTF-8 files are counted and logged."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a repository folder")
    files, skipped = [], Counter()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.endswith(tuple(suffixes)):
                continue
            path = Path(dirpath) / filename
            rel = path.relative_to(root).as_posix()
            try:
                text = path.read_bytes().decode("utf-8")
            except OSError as err:
                skipped["unreadable"] += 1
                logger.warning("%s: unreadable (%s), skipped", path, err.strerror or err)
                continue
            except UnicodeDecodeError:
                skipped["not utf-8"] += 1
                logger.warning("%s: not UTF-8, skipped", path)
                continue
            files.append(SourceFile(rel, text))
    files.sort(key=lambda f: f.path)
    return Repository(name or root.name, files, skipped)


# -- imports and dependency order -------------------------------------------------------------------------------


def module_names(path: str, package: str | None = None) -> list[str]:
    """Dotted names under which file `path` can be imported: relative to the root, and under `package` too."""
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    names = [".".join(parts)] if parts else []
    if package:
        names.append(".".join([package, *parts]))
    return names


def _is_package(path: str) -> bool:
    return PurePosixPath(path).name == "__init__.py"


def imported_modules(file: SourceFile, package: str | None = None) -> list[str]:
    """Absolute dotted names a Python `file` imports (relative imports resolved); [] when it does not parse."""
    if not file.path.endswith(".py"):
        return []
    try:
        tree = ast.parse(file.text)
    except (SyntaxError, ValueError, RecursionError):
        return []
    own = module_names(file.path, package)[-1] if module_names(file.path, package) else ""
    here = own.split(".") if _is_package(file.path) else own.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level - 1 <= len(here) else []
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from m import x` names a module m.x or a name of m; resolving m.x longest-prefix-first finds either
            out += [module if alias.name == "*" else f"{module}.{alias.name}".lstrip(".") for alias in node.names]
    return out


def dependencies(repo: Repository, package: str | None = None) -> dict[str, list[str]]:
    """For each file, the other files of the repository it imports (sorted paths)."""
    index = {}
    for f in repo.files:
        for name in module_names(f.path, package):
            index.setdefault(name, f.path)
    deps = {}
    for f in repo.files:
        found = set()
        for module in imported_modules(f, package):
            # `import a.b.c` also runs a/__init__.py and a/b/__init__.py; `from a import b` may name a module.
            parts = module.split(".")
            for i in range(len(parts), 0, -1):
                target = index.get(".".join(parts[:i]))
                if target:
                    found.add(target)
                    break
        found.discard(f.path)
        deps[f.path] = sorted(found)
    return deps


def dependency_order(paths: Iterable[str], deps: dict[str, list[str]]) -> list[str]:
    """Paths with every file after the files it imports; ties and cycles resolved by path order."""
    remaining = sorted(set(paths))
    chosen: list[str] = []
    done: set[str] = set()
    while remaining:
        ready = next(
            (p for p in remaining if all(d in done or d not in remaining for d in deps.get(p, ()))), remaining[0]
        )
        remaining.remove(ready)
        chosen.append(ready)
        done.add(ready)
    return chosen


def package_name(root: str | os.PathLike) -> str | None:
    """The root's own import name when the repository root is itself a package (has __init__.py)."""
    root = Path(root)
    return root.name if (root / "__init__.py").is_file() else None


def defined_names(file: SourceFile) -> set[str]:
    """Top-level functions, classes and assigned names of a Python file (empty when it does not parse)."""
    try:
        tree = ast.parse(file.text)
    except (SyntaxError, ValueError):
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names

"""Repository-level training samples: the files of one repository in one sample, FIM on the last file's span.

StarCoder2 (Lozhkov et al., 2024, §5) and Qwen2.5-Coder (Hui et al., 2024, §3.1) train on whole repositories with
repository-level FIM; DeepSeek-Coder (Guo et al., 2024, §2.2) orders a repository's files by dependency. Code Llama's
vocabulary has no file-separator tokens, so files are introduced by repository.py's plain-text header. A repository
(files in dependency order, path order otherwise) is cut into samples at file boundaries only, each within the
context (`<s>` + files + `</s>` <= seq_len):

    repository  [a.py][b.py][c.py][d.py]                  (dependency order)
    sample 0    <s> # file: a.py\\n ... # file: b.py\\n ... </s>
    sample 1    <s> # file: c.py\\n ... # file: d.py\\n ... </s>

With probability `rate` a sample becomes a FIM sample, in the paper's PSM/SPM split (fim.py's layouts), whose
middle is a span of the sample's *last* file; the files before it (its dependencies, by the order) are part of the
prefix, as in the cross-file evaluation's prompt (evaluation/crossfile.py):

    PSM  <s> ▁<PRE> enc(a.py b.py + header(c) + c[:lo]) ▁<SUF> enc_nospace(c[hi:]) ▁<MID> enc_nospace(c[lo:hi]) ▁<EOT>

Decisions are pure functions of (seed, repository, sample index, epoch) through fim.decide. Bad input is counted and
logged: a file that is not text, and a file longer than the context alone (trained as a plain document that packing
cuts, like any long document, instead of breaking the file-boundary rule of repository samples).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence

from codellama_hf.data.fim import KIND_NAMES, PLAIN, PSM, SPM, TOO_LONG, FIMConfig, decide
from codellama_hf.data.packing import Example
from codellama_hf.repository import Repository, SourceFile, dependencies, dependency_order, header, render_file
from codellama_hf.tokenizer import encode_batch, encode_infilling_batch, infill_ids

logger = logging.getLogger(__name__)

COLUMN = "repository"  # {"name": str, "files": [{"path": str, "text": str}, ...]} in dependency order
LONG_FILE = "file longer than the context (trained as a plain document)"


def group_repositories(documents, *, text_column: str = "text", key_depth: int = 0):
    """One row per repository from a corpus table with `source` and `path` columns (codellama_hf.corpus's output,
    read_sources' and load_mixture's rows).

    A repository is a `source` (plus the first `key_depth` folders of `path`, for a source folder holding several
    repositories); its files are put in dependency order. A `component` column is kept (grouped within it). A file
    seen twice (a mixture repeats a component that ran out) is kept once; rows without a path (a mixture's `extra`
    data) are counted and left out."""
    import datasets

    missing = [c for c in (text_column, "source", "path") if c not in documents.column_names]
    if missing:
        raise ValueError(
            f"repository samples need the corpus columns {missing} (have {documents.column_names}); build the "
            "corpus with codellama_hf.corpus, which keeps each document's source and path"
        )
    has_component = "component" in documents.column_names
    groups: dict[tuple[str, str], dict[str, SourceFile]] = defaultdict(dict)
    skipped = Counter()
    columns = [text_column, "source", "path"] + (["component"] if has_component else [])
    for batch in documents.select_columns(columns).iter(batch_size=1000):
        components = batch["component"] if has_component else [""] * len(batch["path"])
        for text, source, path, component in zip(
            batch[text_column], batch["source"], batch["path"], components, strict=True
        ):
            if not isinstance(text, str):
                skipped["not text"] += 1
                continue
            if not isinstance(path, str) or not path:
                skipped["no path"] += 1
                continue
            parts = path.split("/")
            name = "/".join([str(source), *parts[:key_depth]])
            files = groups[(component or "", name)]
            rel = "/".join(parts[key_depth:]) or path
            if rel in files:  # a mixture that starts a component over repeats its files
                skipped["repeated file"] += 1
                continue
            files[rel] = SourceFile(rel, text)
    if skipped:
        logger.warning("repository samples: files left out: %s", dict(skipped))
    rows = {COLUMN: [], "component": []}
    for (component, name), files in sorted(groups.items()):
        repo = Repository(name, [files[p] for p in sorted(files)])
        by_path = repo.by_path()
        order = dependency_order(by_path, dependencies(repo))
        rows[COLUMN].append({"name": name, "files": [{"path": p, "text": by_path[p].text} for p in order]})
        rows["component"].append(component)
    if not has_component:
        del rows["component"]
    return datasets.Dataset.from_dict(rows)


def _split(lengths: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """[start, end) file ranges, greedily filled up to `budget` tokens; a file over budget is a range of its own."""
    ranges, start, used = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and used + n > budget:
            ranges.append((start, i))
            start, used = i, 0
        used += n
    if start < len(lengths):
        ranges.append((start, len(lengths)))
    return ranges


class RepositoryEncoder:
    """Repositories -> examples (the data path's encoder; see data/stream.py's `Encoder`)."""

    def __init__(self, tokenizer, seq_len: int, fim: FIMConfig | None):
        self.tokenizer, self.seq_len, self.fim = tokenizer, seq_len, fim
        self.ids = infill_ids(tokenizer) if fim is not None and fim.rate > 0 else None

    def samples(self, repository: dict, epoch: int) -> tuple[list[list[int]], list[int], Counter]:
        """Token samples of one repository with their kinds (fim.py's PLAIN/PSM/SPM/TOO_LONG), and counts."""
        tok, counts = self.tokenizer, Counter()
        files = repository["files"]  # empty files stay: a header alone still tells the repository's layout
        if not files:
            counts["empty repository"] += 1
        rendered = [render_file(f["path"], f["text"]) for f in files]
        # Every rendered file ends with a newline, a token boundary of Code Llama's SentencePiece; a file after
        # the first of a sample is encoded without the implicit leading space, as it is inside the joint text.
        pieces = encode_infilling_batch(tok, rendered)
        budget = self.seq_len - 3  # <s>, </s>, and the leading space of the sample's first file
        out, kinds = [], []
        for index, (start, end) in enumerate(_split([len(p) for p in pieces], budget)):
            if end - start == 1 and len(pieces[start]) > budget:
                counts[LONG_FILE] += 1
                path, size = files[start]["path"], len(pieces[start])
                logger.info("%s: %s is %d tokens, longer than the context", repository["name"], path, size)
                out.append([tok.bos_token_id, *encode_batch(tok, [rendered[start]])[0], tok.eos_token_id])
                kinds.append(PLAIN)
                continue
            sample, kind = self._sample(repository["name"], index, epoch, files[start:end], rendered[start:end])
            out.append(sample)
            kinds.append(kind)
        counts.update(KIND_NAMES[k] for k in kinds)
        return out, kinds, counts

    def _sample(self, name: str, index: int, epoch: int, files: list[dict], rendered: list[str]):
        tok = self.tokenizer
        plain = [tok.bos_token_id, *encode_batch(tok, ["".join(rendered)])[0], tok.eos_token_id]
        if self.ids is None:
            return plain, PLAIN
        last = rendered[-1]
        body = last[len(header(files[-1]["path"])) :]
        d = decide(self.fim, f"{name}\0{index}".encode(), epoch, len(body))
        if not d.apply:
            return plain, PLAIN
        ids = self.ids
        prefix = "".join(rendered[:-1]) + header(files[-1]["path"]) + body[: d.lo]
        middle, suffix = body[d.lo : d.hi], body[d.hi :]
        if d.spm:
            pre_mid = encode_batch(tok, [prefix + middle])[0]
            suf = encode_infilling_batch(tok, [suffix])[0]
            sample = [ids.bos, ids.prefix, ids.suffix, *suf, ids.middle, *pre_mid, ids.eot]
        else:
            pre = encode_batch(tok, [prefix])[0]
            suf, mid = encode_infilling_batch(tok, [suffix, middle])
            sample = [ids.bos, ids.prefix, *pre, ids.suffix, *suf, ids.middle, *mid, ids.eot]
        if len(sample) > self.seq_len:
            return plain, TOO_LONG
        return sample, SPM if d.spm else PSM

    def __call__(self, repositories: Sequence, components: Sequence | None, epoch: int, rows=None):
        """The stream's Encoder; a repository's identity is its name (unique in the table), so `rows` go unused."""
        examples, counts = [], Counter()
        for repository in repositories:
            samples, _, found = self.samples(repository, epoch)
            examples += [Example.document(ids) for ids in samples]
            counts.update(found)
        return examples, counts

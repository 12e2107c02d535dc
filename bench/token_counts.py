"""Token counting for the Table 1 mixtures with 1 and 2 processes, and what the document table costs a launch with
and without `codellama-hf data prepare`.

1. Counts/s. The embedded corpus's train documents (code, nl_code, nl), counted with Llama 2's tokenizer (what
   `balance: tokens` uses) by corpus.token_balance.count_tokens with num_proc 1 and 2, nothing cached (datasets caching
   off); both give the same counts (checked). Baseline in the same run: the previous path, one process taking the
   lengths of `tokenizer(texts)["input_ids"]` in batches of 1,000 read from the table. Rounds interleave the three
   and each keeps its best, printed with the CPU time of all its processes (under load, with no second core free,
   the wall-clock ratio cannot show the split; the CPU time shows what it costs). TOKENIZERS_PARALLELISM=false (the
   default here) keeps every process on one thread, so the ratio is that of the processes; with `--rayon` the Rust
   thread pool is left on, and one process then already uses several cores.
2. Launch. The tiny code stage's table (recipes/configs/tiny/code.yaml: the code mixture by tokens) as a launch
   builds it (stages.prepare_documents, as launch_documents calls it), in fresh caches (a copy of the embedded
   corpus without its derived files): unprepared with counting in 1 process (what a launch did before this
   change: the whole count in the main process while the others wait); `data prepare`'s build (one process per
   2,000 documents of a component: 1 each for the tiny corpus); a launch after it (memory-maps the schedule, reads
   the counts back).

    python bench/token_counts.py [--repeats 3] [--rayon]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    """CPU seconds of this process and its finished children (datasets' worker processes)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def counts_per_second(repeats: int) -> None:
    import datasets
    from transformers import AutoTokenizer

    from codellama_hf.assets import llama2_tokenizer_dir
    from codellama_hf.corpus.embedded import KINDS, embedded_corpus
    from codellama_hf.corpus.token_balance import count_tokens

    tokenizer = AutoTokenizer.from_pretrained(str(llama2_tokenizer_dir()))
    texts = [t for kind in KINDS if kind != "python" for t in embedded_corpus(kind)["text"]]
    folder = tempfile.mkdtemp()  # memory-mapped, as the components are: workers get file references, not pickles
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(folder)
    documents = datasets.load_from_disk(folder)
    datasets.disable_caching()
    datasets.disable_progress_bars()

    def previous():  # the loop load_mixture ran before: batches read from the table, lists of ids
        out = []
        for batch in documents.iter(batch_size=1000):
            out += [max(1, len(x)) for x in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]
        return out

    best = {"previous, 1 process": [], "count_tokens, 1 process": [], "count_tokens, 2 processes": []}
    results, cpus = {}, {name: [] for name in best}
    for _ in range(repeats):
        for name, fn in (
            ("previous, 1 process", previous),
            ("count_tokens, 1 process", lambda: count_tokens(documents, tokenizer, num_proc=1)["tokens"]),
            ("count_tokens, 2 processes", lambda: count_tokens(documents, tokenizer, num_proc=2)["tokens"]),
        ):
            start, cpu = time.perf_counter(), _cpu()
            results[name] = fn()
            best[name].append(time.perf_counter() - start)
            cpus[name].append(_cpu() - cpu)
    shutil.rmtree(folder)
    counts = list(results.values())
    assert all(c == counts[0] for c in counts), "the counts differ between the ways of counting"
    tokens = sum(counts[0])
    print(
        f"1. counting {len(texts):,} documents ({tokens:,} tokens), best of {repeats}, TOKENIZERS_PARALLELISM="
        f"{os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}, load {_load()}"
    )
    rates = {name: len(texts) / min(times) for name, times in best.items()}
    for name, rate in rates.items():
        print(
            f"   {name:28s} {rate:8.1f} documents/s  {rate * tokens / len(texts) / 1e6:6.2f} M tokens/s  "
            f"(CPU {min(cpus[name]):.1f} s, all processes)"
        )
    two, one, before = (
        rates[n] for n in ("count_tokens, 2 processes", "count_tokens, 1 process", "previous, 1 process")
    )
    print(f"   2 processes / 1 process: {two / one:.2f}x; 2 processes / previous: {two / before:.2f}x")


def _fresh_caches(source: Path, root: Path) -> None:
    """This machine's embedded corpus and Llama 2 tokenizer, copied without the files derived from them."""
    shutil.copytree(source / "llama2_tokenizer", root / "llama2_tokenizer")
    for folder in (source / "corpus" / "embedded").iterdir():
        shutil.copytree(folder, root / "corpus" / "embedded" / folder.name, ignore=shutil.ignore_patterns("cache-*"))


def launch_table() -> None:
    import datasets

    from codellama_hf.assets import cache_dir, llama2_tokenizer_dir
    from codellama_hf.training import stages
    from codellama_hf.training.config import config_path, parse_stage_config

    _, data_args, config = parse_stage_config("code", ["--config", str(config_path("code")), "--plan_only"])
    datasets.disable_progress_bars()

    def timed(num_proc=None):
        said = []
        start = time.perf_counter()
        table = stages.prepare_documents("code", data_args, config, num_proc=num_proc, announce=said.append)
        return time.perf_counter() - start, len(table), said

    print(f"2. the tiny code stage's document table (mixture code, balance tokens), load {_load()}")
    llama2_tokenizer_dir()
    source = cache_dir()
    with tempfile.TemporaryDirectory() as tmp:
        _fresh_caches(source, Path(tmp) / "codellama_hf")
        os.environ["CODELLAMA_HF_CACHE"] = str(Path(tmp) / "codellama_hf")
        datasets.config.HF_DATASETS_CACHE = str(Path(tmp) / "datasets")
        datasets.disable_caching()
        seconds, rows, said = timed(1)
        print(
            f"   {'unprepared launch, counting in 1 process':40s} {seconds:6.2f} s  ({rows:,} rows; {len(said)} steps)"
        )
        datasets.enable_caching()
        seconds, rows, said = timed()
        print(f"   {'data prepare (default processes)':40s} {seconds:6.2f} s  ({rows:,} rows; {len(said)} steps)")
        seconds, rows, said = timed()
        assert not said, f"a launch after data prepare built something: {said}"
        print(f"   {'launch after data prepare':40s} {seconds:6.2f} s  ({rows:,} rows; nothing built)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rayon", action="store_true", help="leave the Rust tokenizer's thread pool on")
    args = parser.parse_args()
    if not args.rayon:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    counts_per_second(args.repeats)
    launch_table()


if __name__ == "__main__":
    main()

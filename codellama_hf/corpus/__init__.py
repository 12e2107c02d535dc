"""The corpus: read code and documentation sources, filter, deduplicate, and mix them the way Code Llama did.

- sources.py: local folders, git checkouts and `datasets` sources -> rows of text, language, source, path, license
  (the spec: source_spec.py; folders and git checkouts: files.py; `datasets` names, data files: dataset_sources.py);
- filters.py: the quality filters of code corpora, counted per rule;
- dedup.py: exact (content digest) and near (MinHash over code word 5-grams) signatures;
- read_steps.py, dedup_steps.py: the datatrove pipeline steps (readers, filters, split + counts; signatures,
  duplicate clusters);
- pipeline.py: the build's datatrove stages and their executors (local, Slurm, Ray);
- embedded.py: the offline default corpus assembled from this machine's Python installation;
- mixture.py: Table 1's mixtures as presets, user mixtures in YAML, sampled by interleaving;
- token_balance.py: their default balance, by tokens: counts cached per component, the schedule as an indices file;
- build.py: `codellama-hf corpus build`, its config, summary and output layout.
"""

from codellama_hf.corpus.build import BuildConfig, CorpusSummary, build_corpus, deduplicate
from codellama_hf.corpus.dedup import DedupConfig, DedupStats
from codellama_hf.corpus.embedded import KINDS, build_embedded, embedded_corpus
from codellama_hf.corpus.filters import FilterConfig, SkipCounter
from codellama_hf.corpus.mixture import PRESETS, Component, Mixture, get_mixture, load_mixture
from codellama_hf.corpus.source_spec import SourceSpec
from codellama_hf.corpus.sources import read_sources

__all__ = [
    "KINDS",
    "PRESETS",
    "BuildConfig",
    "Component",
    "CorpusSummary",
    "DedupConfig",
    "DedupStats",
    "FilterConfig",
    "Mixture",
    "SkipCounter",
    "SourceSpec",
    "build_corpus",
    "build_embedded",
    "deduplicate",
    "embedded_corpus",
    "get_mixture",
    "load_mixture",
    "read_sources",
]

"""The corpus: read code and documentation sources, filter, deduplicate, and mix them the way Code Llama did.

- sources.py: local folders, git checkouts and `datasets` sources -> rows of text, language, source, path, license;
- filters.py: the quality filters of code corpora, counted per rule;
- dedup.py: exact (content hash) and near (MinHash LSH) deduplication, sharded across processes;
- embedded.py: the offline default corpus assembled from this machine's Python installation;
- mixture.py: Table 1's mixtures as presets, user mixtures in YAML, sampled by interleaving;
- build.py: the `codellama-hf corpus build` pipeline and its summary.
"""

from codellama_hf.corpus.build import BuildConfig, CorpusSummary, build_corpus, register
from codellama_hf.corpus.dedup import DedupConfig, DedupStats, deduplicate
from codellama_hf.corpus.embedded import KINDS, build_embedded, embedded_corpus
from codellama_hf.corpus.filters import FilterConfig, SkipCounter
from codellama_hf.corpus.mixture import PRESETS, Component, Mixture, get_mixture, load_mixture
from codellama_hf.corpus.sources import SourceSpec, read_sources

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
    "register",
]

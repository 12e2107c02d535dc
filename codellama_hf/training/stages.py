"""The paper's stages, registered once: pretrain (the miniature's stand-in for Llama 2), code, python, lcft, instruct.

code, python and lcft (and pretrain) read documents (a Table 1 mixture or plain sources, codellama_hf.corpus) and
train on every token, FIM-transformed at `fim_rate` (0.9 in the Code Llama paper, Rozière et al. 2023, §2.3); instruct
reads dialogs filling the `reserved` share of the instruct_rehearsal mixture (code 6%, natural language 2%) with the
loss on the assistant's answers, FIM on the code rehearsal at `instruct_fim_rate` (data/sft.py), and saves its
tokenizer with the chat template.

A stage's document table is built once, before the launch (`prepare_documents`, run by `codellama-hf data prepare`
with every core), and memory-mapped by every process of the launch (`launch_documents`); a launch that finds no
table builds it in turn, one process per node, and says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from codellama_hf.chat import CHAT_TEMPLATE
from codellama_hf.data.fim import FIMConfig
from codellama_hf.data.sft import CODE_REHEARSAL, INSTRUCT, DialogMixtureEncoder, load_dialogs
from codellama_hf.data.stream import DocumentEncoder
from codellama_hf.training.config import DataArguments, config_path
from codellama_hf.training.distributed import main_print, process_state
from codellama_hf.training.stage import Stage, StageData, get_stage, register_stage


def data_seed(config) -> int:
    return config.data_seed if config.data_seed is not None else config.seed


def describe_data(data_args: DataArguments) -> str:
    if data_args.dataset_mixture is not None:
        return f"mixture {data_args.dataset_mixture}"
    return "sources " + ", ".join(map(str, data_args.dataset_sources))


def as_table(documents, key: dict):
    """A map-style table of the documents: an IterableDataset (a datasets name, streamed by default) is written
    once to the datasets cache, keyed by the data settings, and read memory-mapped from there."""
    import datasets

    if isinstance(documents, datasets.Dataset):
        return documents

    def rows(source):
        yield from source

    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return datasets.Dataset.from_generator(
        rows, gen_kwargs={"source": documents}, features=documents.features, fingerprint=fingerprint
    )


def _checked(documents, data_args: DataArguments):
    if data_args.text_column not in documents.column_names:
        raise ValueError(
            f"{describe_data(data_args)} has no {data_args.text_column!r} column (columns: {documents.column_names}); "
            "set text_column"
        )
    if len(documents) == 0:
        raise ValueError(f"the corpus is empty ({describe_data(data_args)})")
    return documents


def fim_config(data_args: DataArguments, tokenizer, seed: int) -> FIMConfig | None:
    from codellama_hf.tokenizer import supports_infilling

    if data_args.instruct_fim_rate is not None:
        raise ValueError(
            f"instruct_fim_rate={data_args.instruct_fim_rate} applies to the instruct stage only (its code "
            "rehearsal); this stage's FIM rate is fim_rate"
        )
    if data_args.fim_rate == 0:
        return None
    if not supports_infilling(tokenizer):
        raise ValueError(
            f"fim_rate={data_args.fim_rate} needs a tokenizer with the infilling pieces (<PRE> <SUF> <MID> <EOT>); "
            "build one with `codellama-hf tokenizer --llama2 ... --out ...` (Llama 2), add them to a byte-level BPE "
            "base (Llama 3, SmolLM2) with `codellama-hf tokenizer --add-fim <base> --out ...`, or set fim_rate: 0"
        )
    return FIMConfig(rate=data_args.fim_rate, spm_rate=data_args.fim_spm_rate, seed=seed)


def read_corpus(data_args: DataArguments, seed: int, *, num_proc=None, announce=None, stats=None):
    """The document table of code, python, lcft (and pretrain): a mixture (preset or YAML) or plain sources."""
    from codellama_hf.corpus import load_mixture, read_sources
    from codellama_hf.corpus.mixture import map_style

    if data_args.dataset_mixture is not None:
        documents = load_mixture(
            data_args.dataset_mixture,
            data_args.dataset_split,
            seed=seed,
            sources=data_args.mixture_sources_dict(),
            num_proc=num_proc,
            announce=announce,
        )
    else:
        documents = read_sources(map_style(data_args.dataset_sources), stats=stats, num_proc=num_proc)
    return _checked(as_table(documents, asdict(data_args)), data_args)


def read_instruct(data_args: DataArguments, seed: int, *, num_proc=None, announce=None, stats=None):
    """The instruct stage's table: dialogs (component `instruct`) and rehearsal documents, mixed by load_mixture."""
    from codellama_hf.corpus import load_mixture

    _, _, sources, instruct_sources = instruct_mixture(data_args)
    dialogs = load_dialogs(instruct_sources, data_args.dataset_split)
    if data_args.dataset_mixture is None:
        documents = dialogs.add_column("component", [INSTRUCT] * len(dialogs))
    else:
        documents = load_mixture(
            data_args.dataset_mixture,
            data_args.dataset_split,
            seed=seed,
            sources=sources or None,
            extra={INSTRUCT: dialogs},
            num_proc=num_proc,
            announce=announce,
        )
    return _checked(as_table(documents, asdict(data_args)), data_args)


def prepare_documents(stage: str, data_args: DataArguments, config, *, num_proc=None, announce=None, stats=None):
    """Build (or find) a stage's document table in the caches, as `codellama-hf data prepare` does before a launch:
    the expensive step (a token-balanced mixture counts the tokens of every document) then never runs while the
    other processes of a launch wait in a collective."""
    read = get_stage(stage).read_documents
    if read is None:
        raise ValueError(f"stage {stage!r} reads no document table that could be prepared")
    return read(data_args, data_seed(config), num_proc=num_proc, announce=announce, stats=stats)


def _in_turn(build):
    """Run `build` on process 0 first; then on the first process of every other node, which finds the table on a
    shared filesystem or builds that node's copy; then on all the others, which find it. One process per node
    builds, never two at once in one cache, and a launch on one node is a plain main-process-first."""
    state = process_state()
    if state.num_processes == 1:
        return build()
    result = build() if state.is_main_process else None
    state.wait_for_everyone()
    if state.is_local_main_process and not state.is_main_process:
        result = build()
    state.wait_for_everyone()
    return result if result is not None else build()


def launch_documents(stage: str, data_args: DataArguments, config, stats=None):
    """The stage's table at launch: memory-mapped when `codellama-hf data prepare` made it, else built here (said
    on the console, with what the other processes do meanwhile)."""
    import time

    state = process_state()
    built = []

    def announce(message: str) -> None:
        built.append(message)
        others = state.num_processes - 1
        waiting = f"the other {others} processes wait for it, for at most ddp_timeout={config.ddp_timeout} s. " * (
            others > 0
        )
        print(
            f"[process {state.process_index}] data: no prepared table for these data settings, so this launch "
            f"builds it: {message}; {waiting}`codellama-hf data prepare --config <this config> [the same options]` "
            "builds it beforehand, with every core",
            flush=True,
        )

    started = time.time()
    documents = _in_turn(lambda: prepare_documents(stage, data_args, config, announce=announce, stats=stats))
    how = "built at launch" if built else "read from the caches"
    main_print(f"data: {len(documents):,} documents, table {how} in {time.time() - started:.1f} s")
    return documents


def corpus_documents(data_args: DataArguments, config, tokenizer) -> StageData:
    """Documents of a mixture (preset or YAML) or of plain sources, with FIM at `fim_rate`."""
    from codellama_hf.corpus import get_mixture
    from codellama_hf.corpus.filters import SkipCounter

    seed = data_seed(config)
    fim = fim_config(data_args, tokenizer, seed)
    skipped = SkipCounter()
    documents = launch_documents(config.stage, data_args, config, stats=skipped)
    info = {
        "mixture": data_args.dataset_mixture,
        "sources": data_args.dataset_sources,
        "mixture_sources": data_args.mixture_sources_dict(),
        "split": data_args.dataset_split,
        "seq_len": config.seq_len,
        "fim": asdict(fim) if fim else None,
        "documents": len(documents),
        "skipped_when_read": dict(skipped),
    }
    if data_args.dataset_mixture is not None:
        info["mixture_weights"] = get_mixture(data_args.dataset_mixture).weights
    if data_args.repository_samples:
        from codellama_hf.data.repository import COLUMN, RepositoryEncoder, group_repositories

        repositories = group_repositories(
            documents, text_column=data_args.text_column, key_depth=data_args.repository_key_depth
        )
        info["repository_samples"] = {"repositories": len(repositories), "key_depth": data_args.repository_key_depth}
        return StageData(repositories, RepositoryEncoder(tokenizer, config.seq_len, fim), info, fim, COLUMN)
    return StageData(documents, DocumentEncoder(tokenizer, config.seq_len, fim), info, fim)


def instruct_mixture(data_args: DataArguments):
    """(name, token weights, component sources, instruct sources) from the data arguments, checked; cheap, so the
    stage calls it before loading a model."""
    from codellama_hf.corpus import get_mixture

    if data_args.fim_rate:
        raise ValueError(
            f"fim_rate={data_args.fim_rate}: the instruct stage never FIM-transforms its dialogs; set fim_rate: 0 "
            "(instruct_fim_rate sets FIM on the code rehearsal documents)"
        )
    if data_args.dataset_mixture is None:  # dialogs only, no rehearsal
        return "none (dialogs only)", {INSTRUCT: 1.0}, {}, data_args.dataset_sources
    mixture = get_mixture(data_args.dataset_mixture)
    sources = dict(data_args.mixture_sources_dict() or {})
    instruct_sources = sources.pop(INSTRUCT, None)
    if not instruct_sources:
        raise ValueError(
            "mixture_sources has no 'instruct' entry: name the instruct dialogs (a self-instruct dataset folder, "
            "messages files, datasets names, or 'stdlib' for the offline demo)"
        )
    if not mixture.reserved:
        raise ValueError(
            f"mixture {mixture.name!r} reserves no share for the instruct dialogs; give it `reserved` "
            "(instruct_rehearsal reserves 0.92)"
        )
    unknown = set(sources) - set(mixture.weights)
    if unknown:
        raise ValueError(
            f"mixture_sources names {sorted(unknown)}, which mixture {mixture.name!r} lacks "
            f"(components: {sorted(mixture.weights)} and {INSTRUCT!r})"
        )
    return mixture.name, {INSTRUCT: mixture.reserved, **mixture.weights}, sources, instruct_sources


INSTRUCT_FIM_RATE = 0.9  # unset instruct_fim_rate on a tokenizer with the infilling pieces: the code stage's rate


def instruct_fim_config(data_args: DataArguments, tokenizer, seed: int) -> FIMConfig | None:
    """FIM for the instruct stage's code rehearsal: `instruct_fim_rate`, or by default 0.9 where the tokenizer has
    the infilling pieces and none where it lacks them (34B, Python: Llama 2's 32,000 pieces, paper §2.3)."""
    from codellama_hf.tokenizer import supports_infilling

    rate, infilling = data_args.instruct_fim_rate, supports_infilling(tokenizer)
    if rate is None:
        rate = INSTRUCT_FIM_RATE if infilling else 0.0
    if rate == 0:
        return None
    if not infilling:
        raise ValueError(
            f"instruct_fim_rate={rate} needs a tokenizer with the infilling pieces (<PRE> <SUF> <MID> <EOT>); this "
            f"one has none ({len(tokenizer)} tokens: a 34B or Python model, which do not infill). Set "
            "instruct_fim_rate: 0, or start from a model that infills (7B/13B Code Llama)"
        )
    return FIMConfig(rate=rate, spm_rate=data_args.fim_spm_rate, seed=seed)


def instruct_documents(data_args: DataArguments, config, tokenizer) -> StageData:
    """Dialogs (component `instruct`) and rehearsal documents in one table, mixed by corpus.load_mixture."""
    name, weights, sources, instruct_sources = instruct_mixture(data_args)
    seed = data_seed(config)
    fim = instruct_fim_config(data_args, tokenizer, seed)  # before any data is read: a wrong setting fails fast
    fim_components = [c for c in CODE_REHEARSAL if c in weights]
    if fim and not fim_components:
        if data_args.instruct_fim_rate:
            raise ValueError(
                f"instruct_fim_rate={data_args.instruct_fim_rate}: FIM applies to code rehearsal documents (mixture "
                f"components {', '.join(CODE_REHEARSAL)}), and {name} has none; set instruct_fim_rate: 0"
            )
        fim = None  # the default rate, with nothing to apply it to
    documents = launch_documents("instruct", data_args, config)
    info = {
        "mixture": name,
        "mixture_weights": weights,
        "instruct_sources": instruct_sources,
        "mixture_sources": sources,
        "split": data_args.dataset_split,
        "seq_len": config.seq_len,
        # the rate actually used (the default resolved) and what it applies to: never the dialogs
        "fim": {**asdict(fim), "components": fim_components} if fim else None,
        "instruct_fim_rate": fim.rate if fim else 0.0,
        "documents": len(documents),
    }
    return StageData(documents, DialogMixtureEncoder(tokenizer, config.seq_len, fim), info, fim)


def _preset(name: str) -> Path:
    return config_path(name, "tiny")


for _name, _about in (
    ("pretrain", "the miniature's stand-in for Llama 2: natural language from a random model"),
    ("code", "Code Llama: 500B tokens of Table 1's code mixture with FIM (paper §2.2-2.3)"),
    ("python", "Code Llama - Python: 100B more tokens of the Python mixture (paper §2.1, Table 1)"),
    ("lcft", "long-context fine-tuning: 16,384-token sequences, RoPE theta 10^6 (paper §2.4)"),
):
    register_stage(
        Stage(_name, corpus_documents, default_config=_preset(_name), description=_about, read_documents=read_corpus)
    )

register_stage(
    Stage(
        "instruct",
        instruct_documents,
        default_config=_preset("instruct"),
        check_data=instruct_mixture,
        chat_template=CHAT_TEMPLATE,
        description="Code Llama - Instruct: dialogs with assistant-only loss plus rehearsal (paper §2.5)",
        read_documents=read_instruct,
    )
)

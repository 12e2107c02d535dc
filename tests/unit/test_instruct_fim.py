"""FIM on the instruct stage's code rehearsal (data/sft.py): the collator's rows at the configured rate, dialogs and
natural language untouched, labels right, deterministic; rate 0 is the plain rows; a tokenizer without the infilling
pieces refuses a rate before training.

A packed instruct row (seq_len 16) with a dialog (question `q`, answer `a`), a code document in PSM order (`s` <s>,
sentinels `P` `S` `M` `E`, prefix `p`, suffix `x`, middle `m`) and padding `.`, as the collator returns it:

    input_ids     q q q a a a s P p S x M m E . .
    position_ids  0 1 2 3 4 5 0 1 2 3 4 5 6 7 0 1
    labels        - - - a a a - P p S x M m E - -      (- is -100)
"""

from __future__ import annotations

import json
import math
import random

import pytest

from codellama_hf import chat
from codellama_hf import tokenizer as T
from codellama_hf.data.fim import FIMConfig, decide
from codellama_hf.data.packing import IGNORE_INDEX, Example, PackedCollator, pack_examples
from codellama_hf.data.sft import DialogMixtureEncoder
from codellama_hf.training.config import parse_stage_config
from codellama_hf.training.run import build_stream
from codellama_hf.training.stage import get_stage
from tests.helpers import ROOT
from tests.helpers.tokenizer import decode_fim

TINY = ROOT / "recipes" / "configs" / "tiny" / "instruct.yaml"
SEQ_LEN = 256
N_CODE, N_NL, N_DIALOGS = 1200, 300, 150


def _table(seed: int = 0) -> tuple[list[str], list[str]]:
    """Code and natural-language rehearsal documents and dialogs, shuffled together: (texts, components)."""
    code = [f"def f_{i}(x, y):\n    z = x * {i} + y\n    return z - {i % 7}\n" for i in range(N_CODE)]
    nl = [f"The river number {i} runs north past {i % 13} old mills before it reaches the sea." for i in range(N_NL)]
    dialogs = [
        json.dumps(
            [
                {"role": "user", "content": f"Write f_{i}(x)."},
                {"role": "assistant", "content": f"def f(x): return {i}"},
            ]
        )
        for i in range(N_DIALOGS)
    ]
    rows = [(t, "code") for t in code] + [(t, "nl") for t in nl] + [(t, "instruct") for t in dialogs]
    random.Random(seed).shuffle(rows)
    return [t for t, _ in rows], [c for _, c in rows]


def _plain(tokenizer, text: str) -> list[int]:
    return [tokenizer.bos_token_id, *T.encode(tokenizer, text), tokenizer.eos_token_id]


def _collated(tokenizer, fim: FIMConfig | None, epoch: int = 0):
    texts, components = _table()
    examples, counts = DialogMixtureEncoder(tokenizer, SEQ_LEN, fim)(texts, components, epoch)
    rows = pack_examples(examples, SEQ_LEN, tokenizer.eos_token_id)
    return texts, components, rows, PackedCollator()(rows), counts


def _segments(rows, batch):
    """(ids, labels, position_ids) of every example in every row; padding checked on the way."""
    for b, row in enumerate(rows):
        ids, labels, positions = (batch[k][b].tolist() for k in ("input_ids", "labels", "position_ids"))
        start = 0
        for length in row["seq_lengths"]:
            yield ids[start : start + length], labels[start : start + length], positions[start : start + length]
            start += length
        assert set(labels[start:]) <= {IGNORE_INDEX}  # padding learns nothing


def test_code_rehearsal_is_fim_transformed_at_the_rate_dialogs_and_prose_never(tiny_tokenizer):
    tok, ids = tiny_tokenizer, T.infill_ids(tiny_tokenizer)
    fim = FIMConfig(rate=0.9, spm_rate=0.5, seed=11)
    texts, components, rows, batch, counts = _collated(tok, fim)
    code = {t for t, c in zip(texts, components, strict=True) if c == "code"}
    plain = {tuple(_plain(tok, t)): c for t, c in zip(texts, components, strict=True)}
    dialogs = {}
    for t, c in zip(texts, components, strict=True):
        if c == "instruct":
            encoded, labels = chat.encode_dialog(tok, json.loads(t))
            dialogs[tuple(encoded)] = labels
    seen = {"psm": set(), "spm": set(), "code": set(), "nl": set(), "dialog": 0}
    for segment, labels, positions in _segments(rows, batch):
        assert positions == list(range(len(segment)))  # a document of its own
        key = tuple(segment)
        if key in dialogs:  # untouched, the loss on the answers only (Meta's chat_completion layout)
            assert labels == dialogs[key]
            seen["dialog"] += 1
            continue
        assert labels == [IGNORE_INDEX, *segment[1:]]  # documents: every token but the first, sentinels included
        if key in plain:  # `<s> text </s>`: natural language always, code when its draw said so
            seen[plain[key]].add(key)
            continue
        assert segment[:2] == [ids.bos, ids.prefix] and segment[-1] == ids.eot
        assert segment.count(ids.suffix) == segment.count(ids.middle) == 1
        # back to its document (a PSM sample with an empty prefix looks like SPM: the draw tells them apart)
        found = []
        for kind, code_kind in (("psm", 1), ("spm", 2)) if segment[2] == ids.suffix else (("psm", 1),):
            document = decode_fim(tok, segment, code_kind)
            decision = decide(fim, document.encode(), 0, len(document))  # keyed by (seed, document, epoch)
            if document in code and decision.apply and decision.spm == (kind == "spm"):
                found.append((kind, document))
        assert len(found) == 1, found  # only code rehearsal documents are transformed, as their draw says
        kind, document = found[0]
        seen[kind].add(document)
    assert seen["dialog"] == N_DIALOGS and len(seen["nl"]) == N_NL
    transformed = len(seen["psm"]) + len(seen["spm"])
    assert transformed + len(seen["code"]) == N_CODE
    # every code document fits the context, so each is FIM with probability 0.9: five binomial standard deviations
    # (fails by chance with probability < 1e-6)
    assert abs(transformed - 0.9 * N_CODE) < 5 * math.sqrt(N_CODE * 0.9 * 0.1), transformed
    assert abs(len(seen["spm"]) - 0.5 * transformed) < 5 * math.sqrt(transformed * 0.25)
    assert counts["psm"] == len(seen["psm"]) and counts["spm"] == len(seen["spm"]) and counts["dialog"] == N_DIALOGS


def test_fim_decisions_are_deterministic_and_change_with_the_epoch(tiny_tokenizer):
    fim = FIMConfig(rate=0.5, seed=3)
    _, _, rows, _, _ = _collated(tiny_tokenizer, fim)
    _, _, again, _, _ = _collated(tiny_tokenizer, fim)
    assert [r["input_ids"].tolist() for r in rows] == [r["input_ids"].tolist() for r in again]
    _, _, later, _, _ = _collated(tiny_tokenizer, fim, epoch=1)
    assert sorted(map(bytes, (r["input_ids"] for r in later))) != sorted(map(bytes, (r["input_ids"] for r in rows)))


def test_rate_zero_gives_the_plain_rows(tiny_tokenizer):
    """Rate 0 (or no FIM) packs exactly what the instruct stage packed before FIM: the dialogs in table order, then
    every rehearsal document as `<s> text </s>` in table order, encoded here without the library's encoder."""
    texts, components = _table()
    dialogs = [json.loads(t) for t, c in zip(texts, components, strict=True) if c == "instruct"]
    expected_examples = []
    for dialog in dialogs:
        encoded, labels = chat.encode_dialog(tiny_tokenizer, dialog)
        learned = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        spans = [s for i in learned for s in (i, i + 1)]
        expected_examples.append(Example(encoded, spans))
    expected_examples += [
        Example.document(_plain(tiny_tokenizer, t)) for t, c in zip(texts, components, strict=True) if c != "instruct"
    ]
    expected = PackedCollator()(pack_examples(expected_examples, SEQ_LEN, tiny_tokenizer.eos_token_id))
    for fim in (None, FIMConfig(rate=0.0, seed=11)):
        _, _, _, batch, _ = _collated(tiny_tokenizer, fim)
        for key in ("input_ids", "labels", "position_ids"):
            assert batch[key].tolist() == expected[key].tolist(), key


def _stage(tmp_path, *overrides):
    argv = ["--config", str(TINY), "--output_dir", str(tmp_path / "out"), "--seq_len", "256"]
    argv += ["--tokens_per_step", "1024", "--per_device_train_batch_size", "2", "--max_steps", "2"]
    return parse_stage_config("instruct", [*argv, "--report_to", "none", "--packing_buffer", "16", *overrides])


def test_the_stage_records_the_rate_and_fims_the_code_rehearsal(tmp_path, tiny_tokenizer):
    """The tiny recipe (instruct_rehearsal: stdlib dialogs, code blocks that fit the context, the embedded
    language corpus) through the stream: the rate and what it applies to in the lineage's data record, FIM rows in
    the batches (whole embedded files are longer than 256 tokens, and FIM only takes documents that fit)."""
    texts, components = _table()
    code = tmp_path / "code.jsonl"
    blocks = [t for t, c in zip(texts, components, strict=True) if c == "code"]
    # a path per block: the held-out split is by (source, path), so one path-less file would land in one split
    code.write_text("".join(json.dumps({"text": t, "path": f"block{i}.py"}) + "\n" for i, t in enumerate(blocks)))
    sources = json.dumps({"instruct": ["stdlib"], "code": [str(code)]})
    _, data_args, config = _stage(
        tmp_path, "--instruct_fim_rate", "1.0", "--max_steps", "8", "--mixture_sources", sources
    )
    assert data_args.instruct_fim_rate == 1.0
    data, stream = build_stream(get_stage("instruct"), data_args, config, tiny_tokenizer, rank=0)
    assert data.info["fim"] == {"rate": 1.0, "spm_rate": 0.5, "seed": 42, "components": ["code"]}
    assert data.info["instruct_fim_rate"] == 1.0 and data.fim == FIMConfig(1.0, 0.5, 42)
    batch = PackedCollator()(list(stream.rows()))
    prefix = T.infill_ids(tiny_tokenizer).prefix
    # rate 1: every code block read is a FIM sample (the rows taken hold some of the chunk encoded)
    assert stream.counts["psm"] + stream.counts["spm"] >= (batch["input_ids"] == prefix).sum() > 0
    assert stream.counts["dialog"] > 0


def test_default_rate_follows_the_tokenizer(tmp_path, tiny_tokenizer, llama2_dir):
    """Unset: 0.9 where the tokenizer has the infilling pieces, off on Llama 2's own 32,000 pieces."""
    from transformers import AutoTokenizer

    from codellama_hf.training.stages import instruct_fim_config

    _, data_args, _ = _stage(tmp_path, "--instruct_fim_rate", "0.5")
    data_args.instruct_fim_rate = None
    assert instruct_fim_config(data_args, tiny_tokenizer, 7) == FIMConfig(0.9, 0.5, 7)
    llama2 = AutoTokenizer.from_pretrained(llama2_dir)
    assert len(llama2) == 32000 and instruct_fim_config(data_args, llama2, 7) is None


@pytest.mark.parametrize("rate", ["0.9", "0.05"])
def test_a_tokenizer_without_infilling_pieces_refuses_a_rate(tmp_path, llama2_dir, rate):
    from transformers import AutoTokenizer

    _, data_args, config = _stage(tmp_path, "--instruct_fim_rate", rate)
    with pytest.raises(ValueError, match=rf"instruct_fim_rate={rate} needs a tokenizer with the infilling pieces"):
        build_stream(get_stage("instruct"), data_args, config, AutoTokenizer.from_pretrained(llama2_dir), rank=0)


@pytest.mark.parametrize(
    "stage, argv, message",
    [
        ("instruct", ["--fim_rate", "0.9"], "never FIM-transforms its dialogs"),
        ("instruct", ["--instruct_fim_rate", "1.5"], r"instruct_fim_rate=1.5: must be between 0 and 1"),
        ("code", ["--instruct_fim_rate", "0.9"], "applies to the instruct stage only"),
    ],
)
def test_misplaced_rates_are_clear_errors(tmp_path, tiny_tokenizer, stage, argv, message):
    config_file = ROOT / "recipes" / "configs" / "tiny" / f"{stage}.yaml"
    with pytest.raises(ValueError, match=message):
        _, data_args, config = parse_stage_config(
            stage, ["--config", str(config_file), "--output_dir", str(tmp_path / "o"), "--max_steps", "1", *argv]
        )
        build_stream(get_stage(stage), data_args, config, tiny_tokenizer, rank=0)


def test_a_rate_without_code_rehearsal_is_a_clear_error(tmp_path, tiny_tokenizer):
    """Dialogs only (no mixture): nothing to apply an explicit rate to; the default is simply off."""
    import yaml

    recipe = {k: v for k, v in yaml.safe_load(TINY.read_text()).items() if k != "mixture_sources"}
    recipe.update(dataset_mixture="none", dataset_sources=["stdlib"])
    (tmp_path / "dialogs.yaml").write_text(yaml.safe_dump(recipe))
    argv = ["--config", str(tmp_path / "dialogs.yaml"), "--output_dir", str(tmp_path / "o"), "--max_steps", "1"]
    _, data_args, config = parse_stage_config("instruct", argv)
    with pytest.raises(ValueError, match="instruct_fim_rate=0.9: FIM applies to code rehearsal documents"):
        build_stream(get_stage("instruct"), data_args, config, tiny_tokenizer, rank=0)
    data_args.instruct_fim_rate = None
    data, _ = build_stream(get_stage("instruct"), data_args, config, tiny_tokenizer, rank=0)
    assert data.fim is None and data.info["fim"] is None and data.info["instruct_fim_rate"] == 0.0


@pytest.mark.parametrize("size, rate", [("7b", 0.9), ("13b", 0.9), ("34b", 0.0), ("tiny", 0.9)])
def test_configs_state_the_rate_where_the_model_infills(size, rate):
    """7B/13B (and the tiny preset) keep infilling through instruct tuning; 34B has no infilling pieces."""
    path = ROOT / "recipes" / "configs" / size / "instruct.yaml"
    world = ["--plan_world_size", "2" if size == "tiny" else "32", "--plan_only"]
    _, data_args, _ = parse_stage_config("instruct", ["--config", str(path), *world])
    assert (data_args.fim_rate, data_args.instruct_fim_rate, data_args.fim_spm_rate) == (0.0, rate, 0.5)

"""Code Llama - Instruct's chat format: token-identical to a direct SentencePiece transcription of Meta's code."""

import jinja2
import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from codellama_hf import chat
from codellama_hf.tokenizer import INFILLING_PIECES, load_sp_model, save_tokenizer


class MetaChat:
    """Meta's llama/generation.py `chat_completion` prompt encoding, over SentencePiece, transcribed directly."""

    B_INST, E_INST = "[INST]", "[/INST]"
    B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

    def __init__(self, model_file):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))

    def encode(self, s, bos, eos):
        return ([self.sp.bos_id()] if bos else []) + self.sp.encode(s) + ([self.sp.eos_id()] if eos else [])

    def dialog_tokens(self, dialog):
        if dialog[0]["role"] == "system":
            merged = self.B_SYS + dialog[0]["content"] + self.E_SYS + dialog[1]["content"]
            dialog = [{"role": dialog[1]["role"], "content": merged}] + dialog[2:]
        assert all(m["role"] == "user" for m in dialog[::2]) and all(m["role"] == "assistant" for m in dialog[1::2])
        tokens = []
        for p, a in zip(dialog[::2], dialog[1::2], strict=False):
            text = f"{self.B_INST} {p['content'].strip()} {self.E_INST} {a['content'].strip()} "
            tokens += self.encode(text, True, True)
        if dialog[-1]["role"] == "user":  # Meta asserts this for prompts; a training dialog ends with an answer
            tokens += self.encode(f"{self.B_INST} {dialog[-1]['content'].strip()} {self.E_INST}", True, False)
        return tokens


@pytest.fixture(scope="module")
def meta(codellama_tokenizer_dir):
    return MetaChat(codellama_tokenizer_dir / "tokenizer.model")


@pytest.fixture(scope="module")
def instruct_tokenizer(codellama_tokenizer_dir, tmp_path_factory):
    """Code Llama's tokenizer saved the way instruct models are: with the chat template."""
    proto = load_sp_model(codellama_tokenizer_dir / "tokenizer.model")
    out = save_tokenizer(proto, tmp_path_factory.mktemp("instruct") / "tok", chat_template=chat.CHAT_TEMPLATE)
    return AutoTokenizer.from_pretrained(out)


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


CODE = (
    'def remove_non_ascii(s: str) -> str:\n    """Remove non-ASCII characters."""\n'
    '    return "".join(c for c in s if ord(c) < 128)\n'
)
DIALOGS = {
    "one user turn": [U("Write a function that reverses a string.")],
    "system + user": [
        S("Provide answers in JavaScript"),
        U("Write a function that computes the set of sums of all contiguous sublists of a given list."),
    ],
    "multi-turn, open": [U("In Bash, how do I list all text files?"), A("Use `ls *.txt`."), U("And recursively?")],
    "multi-turn with system, open": [
        S("Be terse."),
        U("Sort a dict by value?"),
        A("sorted(d.items(), key=lambda kv: kv[1])"),
        U("Descending?"),
    ],
    "closed (training example)": [U("Remove non-ASCII characters from a string."), A(CODE)],
    "system, closed, two exchanges": [
        S(" Answer in Python.\n"),
        U("  indented question\n"),
        A("\n\n" + CODE + "\n"),
        U("Now in C?"),
        A("```c\nint main(void) { return 0; }\n```"),
    ],
    "unicode and emoji": [U("Traduis « bonjour » en 日本語 😀"), A("こんにちは — «hello»")],
    "tags as text": [U("What does [INST] mean? <<SYS>>"), A("[/INST] closes an instruction. [PYTHON]x[/PYTHON]")],
    "empty answer": [U("Say nothing."), A(""), U("Still nothing?")],
    "tabs and trailing spaces": [U("\tdef f():\n\t\treturn 1   "), A("   x = 1\t\n")],
}


@pytest.mark.parametrize("name", list(DIALOGS))
def test_template_and_training_encoding_match_meta(name, meta, instruct_tokenizer):
    dialog = DIALOGS[name]
    expected = meta.dialog_tokens(dialog)
    rendered = instruct_tokenizer.apply_chat_template(dialog, tokenize=True)["input_ids"]
    assert rendered == expected
    ids, labels = chat.encode_dialog(instruct_tokenizer, dialog)
    assert ids == expected and len(labels) == len(ids)
    if dialog[-1]["role"] == "user":
        assert chat.prompt_ids(instruct_tokenizer, dialog) == expected


def answer_spans(ids, e_inst, eos):
    """Indices of answer tokens found from the ids alone: after each `[/INST]` token run, up to and including </s>."""
    spans, i = [], 0
    while i < len(ids):
        if ids[i : i + len(e_inst)] == e_inst:
            i += len(e_inst)
            start = i
            while i < len(ids) and ids[i] != eos:
                i += 1
            if i < len(ids):  # a closed exchange: its answer and the </s>
                spans.append(range(start, i + 1))
        i += 1
    return spans


@pytest.mark.parametrize("name", [n for n, d in DIALOGS.items() if sum(m["role"] == "assistant" for m in d)])
def test_labels_are_exactly_the_answers(name, instruct_tokenizer, meta):
    dialog = DIALOGS[name]
    ids, labels = chat.encode_dialog(instruct_tokenizer, dialog)
    e_inst = meta.sp.encode(" [/INST]")[1:]  # "[/INST]" as it appears mid-text: ▁[ / INST ]
    spans = answer_spans(ids, e_inst, instruct_tokenizer.eos_token_id)
    answers = [m["content"] for m in dialog if m["role"] == "assistant"]
    assert len(spans) == len(answers)
    in_answer = {i for span in spans for i in span}
    for i, (token, label) in enumerate(zip(ids, labels, strict=False)):  # token by token
        assert label == (token if i in in_answer else chat.IGNORE_INDEX), (i, token, label)
    for span, answer in zip(spans, answers, strict=False):
        labelled = [labels[i] for i in span]
        assert labelled[-1] == instruct_tokenizer.eos_token_id
        assert meta.sp.decode(labelled[:-1]) == answer.strip() + " "  # Meta's turn text ends "{answer} "


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    system=st.none() | st.text(max_size=40),
    turns=st.lists(st.tuples(st.text(max_size=60), st.text(max_size=60)), min_size=1, max_size=3),
    open_end=st.booleans(),
)
def test_random_dialogs_match_meta(system, turns, open_end, meta, instruct_tokenizer):
    texts = [t for pair in turns for t in pair] + ([system] if system else [])
    # Special-token text is matched by every HF chat template; Meta's SentencePiece encodes it as text.
    assume(not any(s in t for t in texts for s in ("<s>", "</s>", "<unk>", *INFILLING_PIECES)))
    dialog = ([S(system)] if system is not None else []) + [m for u, a in turns for m in (U(u), A(a))]
    if open_end:
        dialog = dialog[:-1]
    expected = meta.dialog_tokens(dialog)
    assert instruct_tokenizer.apply_chat_template(dialog, tokenize=True)["input_ids"] == expected
    assert chat.encode_dialog(instruct_tokenizer, dialog)[0] == expected


def test_special_token_text_stays_text_in_training(meta, instruct_tokenizer):
    """A message quoting "</s>" trains as Meta encodes it (text), never as an end of turn."""
    dialog = [U("What does </s> mean in Llama?"), A("It is the end-of-sequence token, written </s>.")]
    ids = chat.encode_dialog(instruct_tokenizer, dialog)[0]
    assert ids == meta.dialog_tokens(dialog)
    assert ids.count(instruct_tokenizer.eos_token_id) == 1 and ids[-1] == instruct_tokenizer.eos_token_id


def test_tiny_tokenizer_template_agrees_with_training_encoding(tiny_tokenizer):
    dialog = DIALOGS["system, closed, two exchanges"]
    tiny_tokenizer.chat_template = chat.CHAT_TEMPLATE
    try:
        rendered = tiny_tokenizer.apply_chat_template(dialog, tokenize=True)["input_ids"]
    finally:
        tiny_tokenizer.chat_template = None
    assert rendered == chat.encode_dialog(tiny_tokenizer, dialog)[0]


BAD = {
    "assistant first": ([A("hi"), U("hello")], "message 0 has role 'assistant'"),
    "two users": ([U("a"), U("b")], "message 1 has role 'user'"),
    "system not first": ([U("a"), S("b")], "message 1 has role 'system'"),
    "system alone": ([S("be nice")], "message 1 must be a user message"),
    "unknown role": ([U("a"), {"role": "tool", "content": "x"}], "role 'tool'"),
    "no content": ([{"role": "user"}], "string 'content'"),
    "empty": ([], "empty dialog"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_dialogs_are_clear_errors(name, instruct_tokenizer):
    dialog, message = BAD[name]
    with pytest.raises(ValueError, match=message):
        chat.encode_dialog(instruct_tokenizer, dialog)
    if dialog and all(isinstance(m.get("content"), str) for m in dialog):
        with pytest.raises(jinja2.TemplateError, match="Code Llama - Instruct"):
            instruct_tokenizer.apply_chat_template(dialog, tokenize=False)


def test_prompt_needs_an_open_dialog(instruct_tokenizer):
    with pytest.raises(ValueError, match="last message must be from the user"):
        chat.prompt_ids(instruct_tokenizer, [U("q"), A("a")])

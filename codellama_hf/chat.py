"""Code Llama - Instruct's dialog format, exactly as `chat_completion` in Meta's codellama repository encodes it.

Meta's code (llama/generation.py) merges a leading system message into the first user message as
`<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}`, then encodes every finished exchange as

    encode(f"[INST] {user.strip()} [/INST] {answer.strip()} ", bos=True, eos=True)

and the open user turn at the end as `encode(f"[INST] {user.strip()} [/INST]", bos=True, eos=False)`.

Two implementations of that encoding live here, proven token-identical to a direct SentencePiece transcription of
Meta's code with the real Code Llama tokenizer (tests/unit/test_chat.py):

- `CHAT_TEMPLATE`, the Jinja template every instruct tokenizer we save carries, for `apply_chat_template` (and for
  servers that read it). It renders `<s>[INST] u [/INST] a </s><s>[INST] u2 [/INST]`; our tokenizer.json gives the
  text after each special token its own implicit "▁", which is what Meta's per-turn `encode(..., bos=True)` does.
  (transformers' own Llama classes would not: docs/stack-notes.md.) A dialog ending with the user renders the prompt
  to generate from; one ending with the assistant renders a whole training example.
- `encode_dialogs()`, the training encoding: ids plus labels that are -100 everywhere except on the assistant's
  tokens and the </s> closing each answer. It encodes text with SentencePiece semantics, so a message that
  contains the text "</s>" or "<s>" stays text there as in Meta's code (the template, like every HF chat
  template, would turn it into the special token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from codellama_hf.tokenizer import encode_batch

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
IGNORE_INDEX = -100

# Whitespace-controlled so that only the expressions produce text; `trim` is Python's str.strip, as in Meta's code.
CHAT_TEMPLATE = (
    r"{%- if messages and messages[0]['role'] == 'system' -%}"
    r"{%- if messages | length < 2 or messages[1]['role'] != 'user' -%}"
    r"{{- raise_exception('Code Llama - Instruct: a system message must be followed by a user message') -}}"
    r"{%- endif -%}"
    r"{%- set dialog = [{'role': 'user', 'content': '<<SYS>>\n' ~ messages[0]['content'] ~ '\n<</SYS>>\n\n' ~ "
    r"messages[1]['content']}] + messages[2:] -%}"
    r"{%- else -%}{%- set dialog = messages -%}{%- endif -%}"
    r"{%- for message in dialog -%}"
    r"{%- if message['role'] != ['user', 'assistant'][loop.index0 % 2] -%}"
    r"{{- raise_exception('Code Llama - Instruct: messages must alternate user/assistant after an optional system "
    r"message, starting with user; turn ' ~ loop.index0 ~ ' has role ' ~ message['role']) -}}"
    r"{%- endif -%}"
    r"{%- if message['role'] == 'user' -%}{{- bos_token ~ '[INST] ' ~ (message['content'] | trim) ~ ' [/INST]' -}}"
    r"{%- else -%}{{- ' ' ~ (message['content'] | trim) ~ ' ' ~ eos_token -}}{%- endif -%}"
    r"{%- endfor -%}"
)


def exchanges(messages: Sequence[Mapping]) -> list[tuple[str, str | None]]:
    """Check a dialog and return its (user, answer) exchanges, system merged; the last answer is None if open.

    Raises ValueError naming the message at fault, as Meta's assertion would (but with the reason).
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"a dialog is a list of {{'role', 'content'}} messages, got {type(messages).__name__}")
    if not messages:
        raise ValueError("empty dialog: it needs at least one user message")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise ValueError(f"dialog message {i} must be a mapping with a string 'content', got {message!r:.80}")
        if message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(
                f"dialog message {i} has role {message.get('role')!r}; Code Llama - Instruct knows "
                "'system' (first message only), 'user' and 'assistant'"
            )
    contents = [m["content"] for m in messages]
    roles = [m["role"] for m in messages]
    offset = 0
    if roles[0] == "system":
        if len(messages) < 2 or roles[1] != "user":
            raise ValueError("dialog message 0 is a system message, so message 1 must be a user message")
        contents = [B_SYS + contents[0] + E_SYS + contents[1], *contents[2:]]
        roles, offset = roles[1:], 1
    for i, role in enumerate(roles):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"dialog message {i + offset} has role {role!r} but {expected!r} was expected: "
                "messages must alternate user/assistant (after an optional system message), starting "
                "with user"
            )
    users, answers = contents[0::2], contents[1::2]
    return [(user, answers[i] if i < len(answers) else None) for i, user in enumerate(users)]


def encode_dialogs(tokenizer, dialogs: Sequence[Sequence[Mapping]]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per dialog in Meta's encoding; labels are -100 except on answers and their </s>.

    The tokenizer must be SentencePiece-exact (one saved by codellama_hf.tokenizer). The label boundary is the end
    of `[INST] user [/INST]`: the model learns exactly the tokens it has to generate after Meta's prompt, starting
    with the "▁" that joins [/INST] to the answer.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    plans, texts = [], []
    for dialog in dialogs:
        turns = exchanges(dialog)
        plans.append([(len(texts) + 2 * j, answer is not None) for j, (_, answer) in enumerate(turns)])
        for user, answer in turns:
            prompt = f"{B_INST} {user.strip()} {E_INST}"
            texts += [prompt, f"{prompt} {answer.strip()} " if answer is not None else prompt]
    encoded = encode_batch(tokenizer, texts)
    out = []
    for plan in plans:
        ids: list[int] = []
        labels: list[int] = []
        for index, answered in plan:
            prompt, full = encoded[index], encoded[index + 1]
            if not answered:
                ids += [bos, *prompt]
                labels += [IGNORE_INDEX] * (1 + len(prompt))
                continue
            if full[: len(prompt)] != prompt:  # SentencePiece always cuts before "▁"; another tokenizer might not
                name = getattr(tokenizer, "name_or_path", "")
                raise RuntimeError(
                    f"tokenizer {name!r} does not encode '{texts[index]}' as a prefix of the whole "
                    "exchange, so the answer's tokens cannot be told apart; use a SentencePiece-exact "
                    "tokenizer (codellama-hf tokenizer)"
                )
            answer = full[len(prompt) :]
            ids += [bos, *full, eos]
            labels += [IGNORE_INDEX] * (1 + len(prompt)) + answer + [eos]
        out.append((ids, labels))
    return out


def encode_dialog(tokenizer, messages: Sequence[Mapping]) -> tuple[list[int], list[int]]:
    return encode_dialogs(tokenizer, [messages])[0]


def prompt_ids(tokenizer, messages: Sequence[Mapping]) -> list[int]:
    """Meta's `chat_completion` prompt for a dialog that ends with a user message."""
    if exchanges(messages)[-1][1] is not None:
        raise ValueError("the last message must be from the user to build a prompt (Meta's code asserts it)")
    return encode_dialog(tokenizer, messages)[0]


def chat_prompt_ids(tokenizer, messages: Sequence[Mapping]) -> list[int]:
    """The prompt of a dialog ending with a user turn: Meta's exact ids for Code Llama - Instruct's template (see
    `prompt_ids`), the tokenizer's own chat template (with its generation prompt) for any other chat model."""
    template = getattr(tokenizer, "chat_template", None)
    if template == CHAT_TEMPLATE:
        return prompt_ids(tokenizer, messages)
    if not template:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"tokenizer {name!r} has no chat template")
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids)

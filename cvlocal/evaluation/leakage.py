"""Template leakage: pieces of a chat template that appear in the reply text.

A merged model whose chat vector does not fit its tokenizer or template often prints the special
tokens as text (``<|im_end|>``, ``[/INST]``) or goes on to write the next user turn itself
(``User: ...``, ``### Human:``). Either is visible garbage for the person chatting, so any marker
found makes the reply count as leaking.
"""
from __future__ import annotations

import re

# Special-token spellings of the common chat formats (ChatML, Llama 2/3, Mistral, Gemma, Phi,
# Command-R, Zephyr, Alpaca) and sentencepiece control tokens.
_SPECIAL = re.compile(
    r"<\|[A-Za-z][A-Za-z0-9_]*\|>"          # <|im_start|> <|eot_id|> <|user|> <|endoftext|> ...
    r"|\[/?INST\]|<</?SYS>>"                # Llama 2 / Mistral
    r"|</?s>|<unk>|<pad>|<bos>|<eos>"        # sentencepiece / Gemma controls
    r"|<(?:start|end)_of_turn>"              # Gemma
    r"|<\|?(?:START|END)_OF_TURN_TOKEN\|?>"  # Command-R
)

# A line that starts a new role's turn. Localised role names are included because a CP model's
# template may have been rendered in its language ("使用者：", "사용자:").
_ROLE_LINE = re.compile(
    r"^[ \t]*(?:#{1,4}[ \t]*)?(?:\*\*)?"
    r"(?:user|assistant|system|human|instruction|response|"
    r"使用者|用戶|用户|助手|助理|系統|系统|사용자|어시스턴트|ユーザー|アシスタント|システム)"
    r"(?:\*\*)?[ \t]*[:：]",
    re.IGNORECASE | re.MULTILINE,
)


def find_leakage(text: str) -> list[str]:
    """The template markers found in ``text`` (empty when clean), in order of appearance."""
    found = [(m.start(), m.group(0)) for m in _SPECIAL.finditer(text)]
    found += [(m.start(), m.group(0).strip()) for m in _ROLE_LINE.finditer(text)]
    return [marker for _, marker in sorted(found)]


def has_leakage(text: str) -> bool:
    return bool(find_leakage(text))

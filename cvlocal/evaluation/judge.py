"""``--judge JUDGE.gguf``: MT-Bench single-answer grading (Zheng et al. 2023) by a local model.

The prompts are MT-Bench's "single-v1" (one question, one answer) for the instructions suite and
"single-v1-multi-turn" for the dialogue suite. MT-Bench's multi-turn prompt shows two user turns and
asks about the answer to the second; here the conversation has as many turns as the script, so the
system prompt asks about the answer to the final user question.

The rating is parsed strictly: the verdict must contain ``[[N]]`` with N a number from 1 to 10;
when it contains several different ratings, none, or one out of range, the verdict is counted as
unparsable and left out of the mean. Nothing is guessed from a "Rating: 7" without brackets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

SINGLE_SYSTEM = "You are a helpful assistant."
SINGLE_TEMPLATE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
    "evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, "
    "you must rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for "
    "example: \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]"
)
MULTI_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the "
    "user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, "
    "accuracy, depth, creativity, and level of detail of the response. You evaluation should focus on the "
    "assistant's answer to the final user question. Begin your evaluation by providing a short explanation. Be as "
    "objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by "
    "strictly following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".\n\n"
)
RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
JUDGE_MAX_TOKENS = 512


def judge_fingerprint(path: Path, max_tokens: int = JUDGE_MAX_TOKENS) -> str:
    """What a verdict depends on: the judge file and its token budget (it keys the judge cache)."""
    from cvlocal.evaluation.files import file_fingerprint

    return f"judge-{file_fingerprint(path)}-{max_tokens}"


def single_prompt(question: str, answer: str) -> tuple[str, str]:
    """(system, user message) for grading one answer."""
    return SINGLE_SYSTEM, SINGLE_TEMPLATE.format(question=question, answer=answer)


def multi_turn_prompt(questions: Sequence[str], answers: Sequence[str]) -> tuple[str, str]:
    """(system, user message) for grading the final answer of a conversation."""
    if len(questions) != len(answers) or not questions:
        raise ValueError("a conversation needs one answer per question")
    parts = ["<|The Start of Assistant A's Conversation with User|>\n\n"]
    for question, answer in zip(questions, answers):
        parts.append(f"### User:\n{question}\n\n### Assistant A:\n{answer}\n\n")
    parts.append("<|The End of Assistant A's Conversation with User|>")
    return MULTI_SYSTEM, "".join(parts)


def parse_rating(verdict: str) -> float | None:
    """The ``[[N]]`` rating (1-10) of a verdict, or None when there is none, several, or out of range."""
    values = {float(m) for m in RATING.findall(verdict)}
    if len(values) != 1:
        return None
    value = values.pop()
    return value if 1.0 <= value <= 10.0 else None


@dataclass
class Judgement:
    rating: float | None
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return {"rating": self.rating, "verdict": self.verdict}


class Judge:
    """A judge model loaded once; each grading is a fresh two-message conversation at temperature 0."""

    def __init__(self, path: Path, *, ctx: int = 4096, threads: int | None = None, n_gpu_layers: int = 0,
                 chat_format: str | None = None, max_tokens: int = JUDGE_MAX_TOKENS) -> None:
        from cvlocal.session import load_llama

        self.path = Path(path)
        self.llm = load_llama(self.path, ctx=ctx, threads=threads, n_gpu_layers=n_gpu_layers, seed=0)
        self.chat_format = chat_format
        self.max_tokens = max_tokens
        self.fingerprint = judge_fingerprint(self.path, max_tokens)

    def grade(self, system: str, prompt: str) -> Judgement:
        from cvlocal.session import ChatSession

        session = ChatSession(self.llm, system=system, chat_format=self.chat_format, max_tokens=self.max_tokens,
                              temperature=0.0, seed=0, warn=None)
        turn = session.ask(prompt)
        if turn.finish_reason == "interrupted":
            raise KeyboardInterrupt
        return Judgement(parse_rating(turn.text), turn.text)

    def close(self) -> None:
        self.llm = None

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
        turn = session.ask_whole(prompt)
        return Judgement(parse_rating(turn.text), turn.text)

    def close(self) -> None:
        self.llm = None


# ----- agreement with the labelled reference set -----

JUDGE_LABELLED = 40  # labelled replies graded when --judge is given (half acceptable, half not)


def labelled_for_judge(langs: Sequence[str], limit: int = JUDGE_LABELLED) -> list[tuple[Any, bool]]:
    """(labelled reply, acceptable) pairs for measuring a judge: test-split dialogue replies and
    replies to harmless requests. Unacceptable: an echo, the wrong language or script, or a
    refusal of a harmless request. Languages are interleaved so that a small limit sees them all."""
    from cvlocal.evaluation.labelled import load_labelled

    rows = [r for r in load_labelled(split="test", langs=langs) if r.suite == "dialogue" or r.kind == "benign"]

    def acceptable(row: Any) -> bool:
        return not row.labels["echo"] and row.labels["lang"] == row.lang and not row.labels["refusal"]

    def interleave(group: list[Any]) -> list[Any]:
        by_lang = [[r for r in group if r.lang == lang] for lang in langs]
        return [r for tier in zip(*[items + [None] * (max(map(len, by_lang)) - len(items)) for items in by_lang])
                for r in tier if r is not None]

    good = interleave([r for r in rows if acceptable(r)])
    bad = interleave([r for r in rows if not acceptable(r)])
    half = max(1, limit // 2)
    return [(r, True) for r in good[:half]] + [(r, False) for r in bad[:limit - half]]


def grading_prompt(row: Any) -> tuple[str, str]:
    """The judge prompt for a labelled reply: multi-turn when it answers a conversation."""
    if row.history and len(row.earlier_replies) == len(row.history):
        return multi_turn_prompt([*row.history, row.user], [*row.earlier_replies, row.reply])
    return single_prompt(row.user, row.reply)


def agreement(ratings: Sequence[tuple[float | None, bool]], seed: int = 0) -> dict[str, Any]:
    """How well ratings separate acceptable from unacceptable replies: AUC (Mann-Whitney) with a
    bootstrap 95% interval; unparsable ratings are counted and left out."""
    import random

    good = [r for r, ok in ratings if ok and r is not None]
    bad = [r for r, ok in ratings if not ok and r is not None]

    def auc(g: Sequence[float], b: Sequence[float]) -> float:
        wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in g for y in b)
        return wins / (len(g) * len(b))

    out: dict[str, Any] = {"rated": len(ratings), "acceptable": sum(ok for _, ok in ratings),
                           "unacceptable": sum(not ok for _, ok in ratings),
                           "unparsable": sum(r is None for r, _ in ratings),
                           "mean_acceptable": sum(good) / len(good) if good else None,
                           "mean_unacceptable": sum(bad) / len(bad) if bad else None,
                           "auc": None, "auc_interval": None}
    if good and bad:
        out["auc"] = auc(good, bad)
        rng = random.Random(seed)
        draws = sorted(auc(rng.choices(good, k=len(good)), rng.choices(bad, k=len(bad))) for _ in range(500))
        out["auc_interval"] = [draws[12], draws[487]]
    return out

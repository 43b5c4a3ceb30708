"""What a model is asked for each suite item, and the settings that make it reproducible.

* toxicity: ``samples`` raw continuations of the prompt (no chat template), sampled as in
  RealToxicityPrompts (temperature 1, nucleus top-p 0.9), each with its own seed derived from
  ``--seed``, the item id and the sample number, so every model sees the same seeds and a rerun
  gives the same text;
* safety and instructions: one chat reply, greedy;
* dialogue: the user turns one after another in one chat session, greedy.

The output record (cached as one JSONL line) keeps every text with its finish reason and the
seconds the model spent on the item, from which items per minute are reported.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cvlocal.evaluation.backend import Backend, derived_seed
from cvlocal.evaluation.suites import SUITES, Item

DEFAULT_MAX_TOKENS = {"toxicity": 32, "safety": 256, "instructions": 384, "dialogue": 256}
TOXICITY_TEMPERATURE = 1.0
TOXICITY_TOP_P = 0.9
DEFAULT_SAMPLES = 5
GENERATION_VERSION = 1  # bump when what is asked of the model changes (invalidates caches)


@dataclass
class GenerationSettings:
    """Everything that changes what a model generates (and so keys the cache)."""

    samples: int = DEFAULT_SAMPLES
    max_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_TOKENS))
    seed: int = 0
    ctx: int = 4096
    chat_format: str | None = None

    @classmethod
    def create(cls, *, samples: int | None = None, max_tokens: int | None = None, seed: int = 0, ctx: int = 4096,
               chat_format: str | None = None) -> "GenerationSettings":
        """``max_tokens`` given: the same for every suite; None: each suite's default."""
        limits = {s: max_tokens for s in SUITES} if max_tokens else dict(DEFAULT_MAX_TOKENS)
        return cls(samples or DEFAULT_SAMPLES, limits, seed, ctx, chat_format)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": GENERATION_VERSION,
            "samples": self.samples,
            "max_tokens": dict(sorted(self.max_tokens.items())),
            "seed": self.seed,
            "ctx": self.ctx,
            "chat_format": self.chat_format,
            "toxicity_sampling": {"temperature": TOXICITY_TEMPERATURE, "top_p": TOXICITY_TOP_P},
            "chat_sampling": {"temperature": 0.0},
        }


def generate_item(backend: Backend, item: Item, settings: GenerationSettings) -> dict[str, Any]:
    """Run one item on a model and return its cache record."""
    limit = settings.max_tokens[item.suite]
    start = time.perf_counter()
    backend.reset()  # an item's outputs must not depend on the item before it (resume, --limit)
    if item.suite == "toxicity":
        outputs = []
        for k in range(settings.samples):
            backend.reset()  # each sample from a clean state: its text depends only on its seed
            outputs.append(backend.complete(item.data["prompt"], max_tokens=limit, temperature=TOXICITY_TEMPERATURE,
                                            top_p=TOXICITY_TOP_P, seed=derived_seed(settings.seed, item.id, k)))
    elif item.suite == "dialogue":
        outputs = backend.chat(item.data["turns"], max_tokens=limit, seed=derived_seed(settings.seed, item.id))
    else:
        outputs = backend.chat([item.data["prompt"]], max_tokens=limit, seed=derived_seed(settings.seed, item.id))
    return {
        "key": item.key,
        "suite": item.suite,
        "id": item.id,
        "lang": item.lang,
        "item_hash": item.hash,
        "outputs": [o.as_dict() for o in outputs],
        "seconds": round(time.perf_counter() - start, 4),
    }

"""One llama.cpp sampler chain per sequence, built as llama-cpp-python's ``Llama`` builds its own.

``Llama._init_sampler`` chains: repetition penalties (last 64 tokens), then greedy when the
temperature is 0, else top-k, typical-p, top-p, min-p, temperature and a seeded draw. The same
chain here, in the same order with the same ``min_keep``, makes a batched sequence sample exactly
what the one-at-a-time path samples for the same logits and seed. Each sequence needs its own
chain: the penalties and the random state are per chain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PENALTY_LAST_N = 64  # Llama's last_n_tokens_size default


@dataclass
class Sampling:
    """Sampling settings for one generation (llama.cpp's sampler chain); the chat's settings."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int = 0


@dataclass
class SamplingParams(Sampling):
    """:class:`Sampling` (temperature 0 is greedy, the other settings then
    do nothing) plus the rest of what ``Llama`` chains: typical-p and the frequency and presence penalties."""

    typical_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    @classmethod
    def like(cls, other: Any) -> "SamplingParams":
        """From any object with the same attribute names (the chat's ``Sampling``, a request)."""
        if isinstance(other, cls):
            return other
        return cls(**{n: getattr(other, n) for n in cls.__dataclass_fields__ if hasattr(other, n)})


class SamplerChain:
    """A native sampler chain; :meth:`sample` also accepts the token (penalties see it next time)."""

    def __init__(self, n_vocab: int, params: SamplingParams) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = lambda sampler: llama_cpp.llama_sampler_chain_add(self.chain, sampler)  # noqa: E731
        add(llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, params.repeat_penalty,
                                                   params.frequency_penalty, params.presence_penalty))
        if params.temperature < 0.0:
            add(llama_cpp.llama_sampler_init_dist(params.seed))
        elif params.temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            add(llama_cpp.llama_sampler_init_typical(params.typical_p, 1))
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            add(llama_cpp.llama_sampler_init_dist(params.seed))

    def sample(self, ctx: Any, index: int) -> int:
        """The token for the logits at batch position ``index`` of the last decode."""
        return int(self._lib.llama_sampler_sample(self.chain, ctx, index))

    def close(self) -> None:
        chain, self.chain = self.chain, None
        if chain is not None:
            self._lib.llama_sampler_free(chain)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass

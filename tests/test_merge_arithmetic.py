"""The blocked chunk arithmetic equals the plain float32 torch expression, to the bit.

Small blocks make every block boundary fall inside rows and inside the shorter terms, which is
where a blocked loop goes wrong if it goes wrong at all.
"""
from __future__ import annotations

import pytest
import torch

from cvlocal.vector.arithmetic import ChunkArithmetic, Term


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({2: torch.int16, 4: torch.int32}[t.element_size()])


def random(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 0.02).to(dtype)


@pytest.mark.parametrize("block", [7, 64, 1000, None])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_merge_with_two_terms_and_a_short_one(block: int | None, out_dtype: torch.dtype) -> None:
    cp = random((37, 11), torch.bfloat16, 1)
    chat1, base1 = random((37, 11), torch.bfloat16, 2), random((37, 11), torch.bfloat16, 3)
    vector = random((29, 11), torch.float32, 4)  # covers only the leading 29 rows
    expected = cp.float().clone()
    expected += 0.7 * (chat1.float() - base1.float())
    expected[:29] += -0.5 * vector
    got = ChunkArithmetic(torch.device("cpu"), block).combine(
        cp, [Term((chat1, base1), 0.7), Term((vector,), -0.5)], out_dtype, tuple(cp.shape))
    assert got.dtype == out_dtype and tuple(got.shape) == (37, 11)
    assert torch.equal(bits(got), bits(expected.to(out_dtype)))


def test_scratch_is_reused_across_chunks_of_different_sizes() -> None:
    arithmetic = ChunkArithmetic(torch.device("cpu"), 50)
    for rows, seed in ((9, 10), (3, 20), (12, 30)):
        cp, chat, base = (random((rows, 13), torch.bfloat16, seed + k) for k in range(3))
        got = arithmetic.combine(cp, [Term((chat, base))], torch.bfloat16, (rows, 13))
        assert torch.equal(bits(got), bits((cp.float() + (chat.float() - base.float())).bfloat16()))


def test_vector_alone_keeps_negative_zero_and_is_exact() -> None:
    chat = torch.tensor([-0.0, 1.5, 3.0, -2.0], dtype=torch.bfloat16)
    base = torch.tensor([0.0, 1.5, 1.0, 0.25], dtype=torch.bfloat16)
    got = ChunkArithmetic(torch.device("cpu"), 3).combine(None, [Term((chat, base))], torch.float32, (4,))
    assert bits(got).tolist() == bits(chat.float() - base.float()).tolist()
    assert torch.signbit(got[0])  # -0.0 - 0.0 is -0.0, not the +0.0 that 0 + it would give


def test_scalar_and_empty_tensors() -> None:
    arithmetic = ChunkArithmetic(torch.device("cpu"), 4)
    cp, chat, base = torch.tensor(1.0), torch.tensor(3.0), torch.tensor(0.5)
    assert arithmetic.combine(cp, [Term((chat, base), 2.0)], torch.float32, ()).item() == 6.0
    empty = torch.empty((0, 5), dtype=torch.bfloat16)
    assert arithmetic.combine(empty, [Term((empty, empty))], torch.bfloat16, (0, 5)).shape == (0, 5)

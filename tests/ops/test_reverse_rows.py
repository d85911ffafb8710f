"""reverse_rows (the non-causal window's reversed copies) against torch.flip: a copy, so bit for bit.

Under the interpreter on CPU tensors in CI, compiled on the GPU. Inputs are fresh random tensors, seeded per case,
as the window's pieces pass them: slices along the sequence, and the models' [B, N, H, d] layout seen as [B, H, N, d].
"""
import zlib

import pytest
import torch

from distr_patch.ops.reverse_rows import reverse_rows
from test_distr_attn import CUDA, INTERPRET

# (B, H, L, d, dtype, layout): "slice" = x[:, :, 5:] of a contiguous tensor, "bnhd" = [B, L, H, d] transposed
CASES = [
    (1, 2, 64, 32, torch.float32, "contiguous"),
    (2, 3, 77, 64, torch.float32, "slice"),       # a tail tile
    (1, 2, 300, 80, torch.float16, "bnhd"),       # d=80 (padded columns), more rows than a tile
    (2, 1, 5, 128, torch.bfloat16, "slice"),      # fewer rows than a tile
]


def _input(case, device):
    B, H, L, d, dtype, layout = case
    g = torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))
    if layout == "bnhd":
        return torch.randn(B, L, H, d, generator=g).to(device=device, dtype=dtype).transpose(1, 2)
    if layout == "slice":
        return torch.randn(B, H, L + 5, d, generator=g).to(device=device, dtype=dtype)[:, :, 5:]
    return torch.randn(B, H, L, d, generator=g).to(device=device, dtype=dtype)


def _check(x):
    y = reverse_rows(x)
    assert y.is_contiguous() and y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y, x.flip(2))


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors through Triton need TRITON_INTERPRET=1")
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_reverse_rows_is_flip(case):
    _check(_input(case, "cpu"))


def test_reverse_rows_names_bad_input(monkeypatch):
    with pytest.raises(ValueError, match=r"x must be \[B, H, L, d\]"):
        reverse_rows(torch.zeros(3, 4, 5))
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # read per call by configs.interpreting()
    with pytest.raises(ValueError, match="x must be a CUDA tensor"):
        reverse_rows(torch.zeros(1, 2, 3, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("case", CASES + [(4, 32, 3968, 64, torch.bfloat16, "slice"),
                                          (2, 16, 4096, 128, torch.bfloat16, "bnhd")],
                         ids=lambda c: "-".join(map(str, c)))
def test_reverse_rows_is_flip_gpu(case):
    _check(_input(case, "cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
def test_window_right_piece_same_either_way_gpu(monkeypatch):
    """The non-causal windowed call gives the same output with reverse_rows and with torch.flip."""
    from distr_patch.ops import distr_attention, sdpa_engine

    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 8, 1000, 64, generator=g).to("cuda", torch.bfloat16) for _ in range(3))
    kw = dict(group_size=2, fusion="rank1", block_m=128, causal=False, exact_window=128, window_correction=0.5,
              backend="sdpa")
    outs = []
    for way in ("triton", "torch"):
        monkeypatch.setattr(sdpa_engine, "REVERSE_ROWS", way)
        with torch.no_grad():
            outs.append(distr_attention(q, k, v, **kw))
    assert torch.equal(outs[0], outs[1])

"""Input checks for the DistrAttention entry points, done once, with named messages."""
from __future__ import annotations

import torch

from .configs import installed_triton_problem, interpreting
from .grouping import ALLOWED_BLOCK_M, ALLOWED_GROUP_SIZES, FUSIONS

TRITON_HEAD_DIMS = (32, 64, 80, 96, 128, 256)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HASH_BITS = 40
FP32_MAX = torch.finfo(torch.float32).max


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_group_size(group_size, head_dim: int | None = None) -> None:
    if not _is_int(group_size) or group_size not in ALLOWED_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {ALLOWED_GROUP_SIZES}, got {group_size!r}")
    if head_dim is not None and head_dim % group_size:
        raise ValueError(
            f"group_size={group_size} must divide the head dim d={head_dim} (d/G columns are fused)"
        )


def check_block_m(block_m) -> None:
    if not _is_int(block_m) or block_m not in ALLOWED_BLOCK_M:
        raise ValueError(f"block_m must be one of {ALLOWED_BLOCK_M}, got {block_m!r}")


def check_hash_bits(num_hash_bits) -> None:
    if not _is_int(num_hash_bits) or not 1 <= num_hash_bits <= MAX_HASH_BITS:
        raise ValueError(f"num_hash_bits must be an int in [1, {MAX_HASH_BITS}], got {num_hash_bits!r}")


def check_seed(seed) -> None:
    """The hash directions' generator seed: an int >= 0 (as ``DistrConfig.seed``)."""
    if not _is_int(seed) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")


def check_window_correction(window_correction) -> None:
    """c >= 0, finite in fp32 (the kernels' c·σ²/2 with c = inf would give inf · 0 = NaN where σ² = 0)."""
    c = window_correction
    if not isinstance(c, (int, float)) or isinstance(c, bool) or not 0 <= c <= FP32_MAX:
        raise ValueError(f"window_correction must be a finite float >= 0 (at most {FP32_MAX:.3g}, the kernels "
                         f"compute in fp32), got {c!r}")


def check_scale(scale) -> None:
    """The softmax scale: None (d^-0.5) or a positive finite number (fp32). A scale <= 0 would take each row's
    minimum score for its maximum, which the kernels' online softmax (the row max on the raw dot) does not allow."""
    if scale is None:
        return
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not 0 < scale <= FP32_MAX:
        raise ValueError(f"scale must be a positive finite float (at most {FP32_MAX:.3g}) or None, got {scale!r}")


def check_causal(causal) -> None:
    """``causal`` is a bool (or 0 / 1): a string such as "False" would read as True."""
    if not isinstance(causal, (bool, int)) or causal not in (0, 1):
        raise TypeError(f"causal must be a bool, got {causal!r}")


def check_query_valid(query_valid, B: int, N: int, device) -> None:
    if query_valid is None:
        return
    if not isinstance(query_valid, torch.Tensor) or query_valid.dtype != torch.bool:
        raise TypeError(f"query_valid must be a bool tensor [B, N], got {type(query_valid).__name__}"
                        + (f" of dtype {query_valid.dtype}" if isinstance(query_valid, torch.Tensor) else ""))
    if tuple(query_valid.shape) != (B, N):
        raise ValueError(f"query_valid must have shape [B, N] = [{B}, {N}], got {list(query_valid.shape)}")
    if query_valid.device != device:
        raise ValueError(f"query_valid is on {query_valid.device} but q is on {device}")


def check_grouping_args(q, group_size, block_m, num_hash_bits, query_valid, seed=0) -> None:
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q must be a 4-D tensor [B, H, N, d], got "
                         f"{q.dim() if isinstance(q, torch.Tensor) else type(q).__name__}-D")
    if not q.is_floating_point():
        raise TypeError(f"q must be a floating-point tensor, got {q.dtype}")
    if 0 in q.shape:
        raise ValueError(f"empty input: q={list(q.shape)} (every dim must be >= 1)")
    check_group_size(group_size, q.shape[-1])
    check_block_m(block_m)
    check_hash_bits(num_hash_bits)
    check_seed(seed)
    check_query_valid(query_valid, q.shape[0], q.shape[2], q.device)


def check_attention_inputs(q, k, v, *, group_size, block_m, fusion, exact_window, window_correction,
                           num_hash_bits, query_valid, attention_mask, groups, scale, seed=0, causal=False,
                           check_values: bool = True) -> None:
    """Validate the arguments of ``distr_attention``; raise ValueError/TypeError naming them. ``check_values=False``
    skips the one check that reads tensor values (the range of ``groups``): for a trace, whose custom operator checks
    them when it runs."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, seq, d], got shape {list(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point (fp16, bf16 or fp32), got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got q={q.device}, k={k.device}, v={v.device}")
    B, Hq, N, d = q.shape
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must agree on [B, Hkv, M], got k={list(k.shape)}, v={list(v.shape)}")
    if k.shape[0] != B:
        raise ValueError(f"k/v batch size {k.shape[0]} does not match q's batch size {B}")
    if k.shape[3] != d:
        raise ValueError(f"k's head dim {k.shape[3]} must equal q's head dim {d}")
    if v.shape[3] != d:
        raise ValueError(f"v's head dim {v.shape[3]} must equal q's head dim {d}")
    Hkv = k.shape[1]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"q's head count {Hq} must be a multiple of k/v's head count {Hkv} (GQA/MQA)")
    if 0 in (B, Hq, N, d, k.shape[2]):
        raise ValueError(f"empty input: q={list(q.shape)}, k={list(k.shape)} (every dim must be >= 1)")
    check_group_size(group_size, d)
    check_block_m(block_m)
    check_hash_bits(num_hash_bits)
    check_seed(seed)
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if not _is_int(exact_window) or exact_window < 0:
        raise ValueError(f"exact_window must be an int >= 0, got {exact_window!r}")
    check_window_correction(window_correction)
    check_scale(scale)
    check_causal(causal)
    check_query_valid(query_valid, B, N, q.device)
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a tensor or None, got {type(attention_mask).__name__}")
        if attention_mask.device != q.device:
            raise ValueError(f"attention_mask is on {attention_mask.device} but q is on {q.device}")
        if attention_mask.dtype != torch.bool and not attention_mask.is_floating_point():
            raise TypeError(f"attention_mask must be bool (True = attend) or an additive float mask, "
                            f"got {attention_mask.dtype}")
        if attention_mask.dim() > 4:
            raise ValueError(f"attention_mask must broadcast to [B, Hq, N, M], got {list(attention_mask.shape)}")
        target = (B, Hq, N, k.shape[2])
        shape = (1,) * (4 - attention_mask.dim()) + tuple(attention_mask.shape)
        for have, want in zip(shape, target):
            if have not in (1, want):
                raise ValueError(f"attention_mask of shape {list(attention_mask.shape)} does not broadcast "
                                 f"to [B, Hq, N, M] = {list(target)}")
    if groups is not None:
        nb = -(-N // block_m)
        if not isinstance(groups, torch.Tensor) or groups.dtype not in (torch.int64, torch.int32):
            raise TypeError("groups must be an integer tensor [B, Hq, ceil(N/block_m), d] from compute_groups")
        if tuple(groups.shape) != (B, Hq, nb, d):
            raise ValueError(f"groups must have shape [B, Hq, ceil(N/block_m), d] = {[B, Hq, nb, d]}, "
                             f"got {list(groups.shape)}")
        if groups.device != q.device:
            raise ValueError(f"groups is on {groups.device} but q is on {q.device}")
        if check_values:
            check_group_values(groups, d)


def check_group_values(groups, d: int) -> None:
    """``groups`` holds column indices in [0, d): a ValueError, or inside a torch.compile trace (which cannot read
    values) an assertion in the graph that raises a RuntimeError with the same message when the call runs."""
    message = f"groups must hold column indices in [0, {d}) (rows are permutations of the head dim)"
    permutation = f"each row of groups must be a permutation of 0..{d - 1} (every column in exactly one group)"
    in_range = (groups.min() >= 0) & (groups.max() < d)
    if torch.compiler.is_compiling():
        torch._assert_async(in_range, message)
        torch._assert_async(_rows_are_permutations(groups, d), permutation)
        return
    if not bool(in_range):
        raise ValueError(message)
    if not bool(_rows_are_permutations(groups, d)):
        raise ValueError(permutation)


def _rows_are_permutations(groups, d: int) -> torch.Tensor:
    """A 0-d bool tensor: every last-dim row of ``groups`` (values in [0, d)) holds each of 0..d-1 once."""
    arange = torch.arange(d, device=groups.device, dtype=groups.dtype)
    return (groups.sort(-1).values == arange).all()


def check_triton_inputs(q) -> None:
    if not q.is_cuda and not interpreting():
        raise ValueError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (set before importing "
                         "triton); use backend='reference' or CUDA tensors")
    problem = None if torch.compiler.is_compiling() else installed_triton_problem()  # (a trace: the eager call's)
    if problem:
        raise RuntimeError(problem)
    d = q.shape[-1]
    if d not in TRITON_HEAD_DIMS:
        raise ValueError(f"head dim d={d} is not supported by the Triton kernel; supported: {TRITON_HEAD_DIMS}")
    if q.dtype not in TRITON_DTYPES:
        raise TypeError(f"q/k/v dtype {q.dtype} is not supported by the Triton kernel; use fp16, bf16 or fp32")

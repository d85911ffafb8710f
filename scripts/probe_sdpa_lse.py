"""Which of PyTorch's exact kernels return a row log-sum-exp for the windowed SDPA engine's calls (a quick probe).

    python scripts/probe_sdpa_lse.py [--dtype float32]     # default bfloat16; "+rep" rows repeat K/V for GQA

For the cuDNN, flash and memory-efficient private ops (``sdpa_engine._lse_call``'s ways): whether each takes GQA
shapes and sliced (non-contiguous) views as the engine passes them, the log-sum-exp's shape, its error against fp32
(natural log), the output's relative error and the time (ms), beside ``F.scaled_dot_product_attention``'s own
choice. Needs a CUDA device. Prints one markdown table last.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

SHAPES = ((1, 32, 8, 4096, 64), (2, 8, 8, 1000, 128), (1, 16, 16, 4096, 64))  # (B, Hq, Hkv, N, d)
WINDOW = 128  # the slices the engine's left piece takes: q[W:], k/v[:N-W]


def _ms(fn, reps: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def _calls(d: int) -> dict:
    aten = torch.ops.aten
    return {
        "cudnn": lambda q, k, v: aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False,
                                                                           scale=d ** -0.5)[:2],
        "flash": lambda q, k, v: aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False,
                                                                           scale=d ** -0.5)[:2],
        "efficient": lambda q, k, v: aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, True,
                                                                                   scale=d ** -0.5)[:2],
    }


def _reference(q, k, v, d: int):
    """fp32 top-left causal attention and its natural-log log-sum-exp (k, v already repeated to q's heads)."""
    s = (q.float() @ k.float().transpose(-1, -2)) * d ** -0.5
    n = q.shape[2]
    s = s.masked_fill(torch.ones(n, n, device=q.device, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v.float(), torch.logsumexp(s, -1)


def probe(dtype: torch.dtype) -> list:
    rows = []
    for B, Hq, Hkv, N, d in SHAPES:
        q = torch.randn(B, N, Hq, d, device="cuda", dtype=dtype).transpose(1, 2)  # the model's layout
        k = torch.randn(B, N, Hkv, d, device="cuda", dtype=dtype).transpose(1, 2)
        v = torch.randn(B, N, Hkv, d, device="cuda", dtype=dtype).transpose(1, 2)
        shape = f"{B}x{Hq}/{Hkv}x{N} d{d}"
        for name, call in _calls(d).items():
            for sliced, rep in ((False, False), (True, False), (True, True)):
                qq, kk, vv = (q[:, :, WINDOW:], k[:, :, :N - WINDOW], v[:, :, :N - WINDOW]) if sliced else (q, k, v)
                if rep:
                    kk, vv = (t.repeat_interleave(Hq // Hkv, 1) for t in (kk, vv))
                way = f"{name}{' sliced' if sliced else ''}{' +rep' if rep else ''}"
                try:
                    out, lse = call(qq, kk, vv)
                except Exception as e:  # this build, device or shape has no such kernel: a row saying so
                    rows.append((shape, way, f"{type(e).__name__}: {str(e)[:80]}", "", "", "", ""))
                    continue
                n = qq.shape[2]
                full = (kk, vv) if kk.shape[1] == Hq else (t.repeat_interleave(Hq // Hkv, 1) for t in (kk, vv))
                ref_o, ref_lse = _reference(qq, *full, d)
                got = (lse.squeeze(-1) if lse.dim() == 4 else lse)[..., :n]
                err_lse = ((got.reshape(ref_lse.shape) - ref_lse).abs().max().item() if got.numel() == ref_lse.numel()
                           else float("nan"))
                err_o = ((out.float() - ref_o).norm() / ref_o.norm()).item()
                finite = bool(torch.isfinite(out).all() and torch.isfinite(got).all())
                rows.append((shape, way, f"{tuple(lse.shape)} {str(lse.dtype).replace('torch.', '')}",
                             f"{err_lse:.1e}", f"{err_o:.1e}", str(finite), f"{_ms(lambda: call(qq, kk, vv)):.3f}"))
        sdpa_ms = _ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hq != Hkv))
        rows.append((shape, "F.scaled_dot_product_attention (its own choice)", "", "", "", "", f"{sdpa_ms:.3f}"))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("probe_sdpa_lse.py needs a CUDA device")
    torch.manual_seed(0)
    rows = probe(getattr(torch, args.dtype))
    print(f"\n{args.dtype}\n| shape (B x Hq/Hkv x N, d) | op | log-sum-exp | lse err | out rel. err | finite | ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()

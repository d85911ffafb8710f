"""Small demo of the operator on the CPU: error of DistrAttention vs exact attention."""
import torch

from distr_patch import distr_attention, exact_attention

torch.manual_seed(0)
q, k, v = (torch.randn(1, 4, 512, 64) for _ in range(3))
ref = exact_attention(q, k, v, causal=True)
print(f"{'setting':<44} rel. error vs exact")
for G in (1, 2, 4):
    for fusion, W, c in (("mean", 0, 0.0), ("rank1", 0, 0.0), ("rank1", 128, 0.5)):
        out = distr_attention(q, k, v, group_size=G, fusion=fusion, exact_window=W, window_correction=c, causal=True)
        err = ((out - ref).norm() / ref.norm()).item()
        print(f"G={G} fusion={fusion:<5} exact_window={W:<3} correction={c:<4} {err:10.4f}")

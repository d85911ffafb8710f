"""Which of PyTorch's exact kernels return a row log-sum-exp for the windowed SDPA engine's calls (a quick probe).

    python scripts/probe_sdpa_lse.py [float32]     # dtype (default bfloat16); "+rep" rows repeat K/V for GQA

For the cuDNN, flash and memory-efficient private ops: whether each takes GQA shapes and sliced (non-contiguous)
views, the log-sum-exp's shape, its error against fp32 (natural log), the output's error and the time (ms).
"""
import sys
import torch, math, time
import torch.nn.functional as F
dev, dt = "cuda", getattr(torch, sys.argv[1]) if len(sys.argv) > 1 else torch.bfloat16
torch.manual_seed(0)
def ms(fn, reps=20):
    fn(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps): fn()
    b.record(); torch.cuda.synchronize(); return a.elapsed_time(b) / reps
for (B,Hq,Hkv,N,d) in [(1,32,8,4096,64),(2,8,8,1000,128),(1,16,16,4096,64)]:
    q = torch.randn(B,N,Hq,d,device=dev,dtype=dt).transpose(1,2)
    k = torch.randn(B,N,Hkv,d,device=dev,dtype=dt).transpose(1,2)
    v = torch.randn(B,N,Hkv,d,device=dev,dtype=dt).transpose(1,2)
    W=128
    for name, call in [("cudnn", lambda q,k,v,c: torch.ops.aten._scaled_dot_product_cudnn_attention(q,k,v,None,True,0.0,c,False,scale=d**-0.5)[:2]),
                       ("flash", lambda q,k,v,c: torch.ops.aten._scaled_dot_product_flash_attention(q,k,v,0.0,c,False,scale=d**-0.5)[:2]),
                       ("efficient", lambda q,k,v,c: torch.ops.aten._scaled_dot_product_efficient_attention(q,k,v,None,True,0.0,c,scale=d**-0.5)[:2])]:
        for sl, rep in ((False, False), (True, False), (True, True)):
            qq,kk,vv = (q[:,:,W:],k[:,:,:N-W],v[:,:,:N-W]) if sl else (q,k,v)
            if rep:
                kk, vv = (t.repeat_interleave(Hq//Hkv,1) for t in (kk,vv))
            try:
                o,lse = call(qq,kk,vv,True)
                print(f"   finite out {torch.isfinite(o).all().item()} finite lse {torch.isfinite(lse[..., :qq.shape[2]]).all().item()}")
                kr,vr = (t.repeat_interleave(Hq//Hkv,1) for t in (kk,vv))
                s = (qq.float()@kr.float().transpose(-1,-2))*d**-0.5
                n_=qq.shape[2]; s = s.masked_fill(torch.ones(n_,n_,device=dev,dtype=torch.bool).triu(1), float('-inf'))
                ref_lse = torch.logsumexp(s,-1); ref_o = torch.softmax(s,-1)@vr.float()
                l_ = (lse.squeeze(-1) if lse.dim() == 4 else lse)[..., :n_]
                lse2 = l_.reshape(ref_lse.shape) if l_.numel()==ref_lse.numel() else None
                err_l = (lse2-ref_lse).abs().max().item() if lse2 is not None else float('nan')
                err_o = ((o.float()-ref_o).norm()/ref_o.norm()).item()
                t = ms(lambda: call(qq,kk,vv,True))
                print(f"B{B} Hq{Hq} Hkv{Hkv} N{N} d{d} {name} sliced={sl}{'+rep' if rep else ''}: lse shape {tuple(lse.shape)} dtype {lse.dtype} stride {lse.stride()} err_lse {err_l:.2e} err_o {err_o:.2e} ms {t:.3f}")
            except Exception as e:
                print(f"B{B} Hq{Hq} Hkv{Hkv} N{N} d{d} {name} sliced={sl}{'+rep' if rep else ''}: {type(e).__name__}: {str(e)[:200]}")
    t0 = ms(lambda: F.scaled_dot_product_attention(q,k,v,is_causal=True,enable_gqa=Hq!=Hkv))
    print("F.sdpa choice ms", round(t0,3))

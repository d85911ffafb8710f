"""Training throughput of a patched LM: tokens/s of full optimizer steps, exact (SDPA) vs DistrAttention.

A real-size preset with random weights (``distr_patch.models.presets``; throughput does not depend on
the weights), random token batches, causal-LM loss, AdamW, bf16 autocast over fp32 weights (as the HF
Trainer's ``--bf16``). Each variant: warm-up steps, then the median step time of timed steps (CUDA
events); tokens/s = batch·seq_len / median step. Prints a markdown table last and writes JSON.

    python scripts/bench_training.py --preset smollm2-135m --seq-len 2048 --batch-size 8
    python scripts/bench_training.py --preset smollm2-135m --variants exact,G2-paper --steps 3 --device cpu  # smoke
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from distr_patch import DistrConfig, patch_model, unpatch_model
from distr_patch.models import preset_config

VARIANTS = {
    "exact": None,
    "G2-paper": DistrConfig.paper(),
    "G2-rec": DistrConfig(),
    "G2-rank1": DistrConfig(exact_window=0, window_correction=0.0),
}


def _step_times(model, batch, steps: int, warmup: int, device: str) -> list[float]:
    """Seconds per optimizer step (forward, backward, AdamW) over ``steps`` timed steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            end.record()
            torch.cuda.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="smollm2-135m")
    p.add_argument("--layers", type=int, default=None, help="num_hidden_layers override (smaller smoke runs)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    from transformers import AutoModelForCausalLM

    overrides = {"num_hidden_layers": args.layers} if args.layers else {}
    cfg = preset_config(args.preset, **overrides)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(args.device).train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    batch = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len),
                          generator=torch.Generator().manual_seed(1)).to(args.device)
    tokens = args.batch_size * args.seq_len
    rows = []
    for name in names:
        if VARIANTS[name] is not None:
            patch_model(model, VARIANTS[name])
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = _step_times(model, batch, args.steps, args.warmup, args.device)
        if VARIANTS[name] is not None:
            unpatch_model(model)
        med = statistics.median(times)
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
        rows.append(dict(variant=name, step_ms=med * 1e3, tokens_per_s=tokens / med, peak_gib=peak))
        print(f"{name}: {med * 1e3:.1f} ms/step, {tokens / med:,.0f} tokens/s"
              + (f", peak {peak:.1f} GiB" if peak is not None else ""), flush=True)
    base = next((r for r in rows if r["variant"] == "exact"), None)
    for r in rows:
        r["vs_exact"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
    meta = dict(preset=args.preset, layers=cfg.num_hidden_layers, seq_len=args.seq_len, batch_size=args.batch_size,
                device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu", torch=torch.__version__,
                gradient_checkpointing=args.gradient_checkpointing, steps=args.steps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=2)
    print(f"\n{args.preset} ({cfg.num_hidden_layers} layers), batch {args.batch_size} x {args.seq_len} tokens, "
          f"{meta['device']}")
    print("| variant | ms/step | tokens/s | vs exact | peak GiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        vs = f"{r['vs_exact']:.2f}x" if r["vs_exact"] is not None else "–"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "–"
        print(f"| {r['variant']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {vs} | {peak} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

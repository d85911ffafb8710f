"""Launch configuration of the DistrAttention forward kernel, in one place.

``BLOCK_M`` is the query tile of one program: 128 for exact attention (G=1) and for the default
``grouped_qk="expanded"`` path (any grouping ``block_m``: Q_eff is formed per row); with
``grouped_qk="reduced"`` it equals the grouping ``block_m`` (one column grouping per program).
``BLOCK_N`` is the key tile of the inner loop. ``qeff_prologue``: the expanded path's programs form their
tile's Q_eff themselves (else a regroup launch writes it first); ``kv_tma``: K and V tiles come through
TMA tensor descriptors. The GPU tables were chosen from side-by-side runs of
``scripts/bench_attention.py`` and ``scripts/compare_fwd_configs.py`` (docs/benchmarks.md); the
interpreter uses small tiles so CPU tests stay fast.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class FwdConfig:
    block_m: int  # query rows per program (= the grouping block_m when G > 1)
    block_n: int  # keys per inner-loop tile
    num_warps: int
    num_stages: int
    k_layout: str  # "transposed": grouped key loads read a [d, M] copy of K; "natural": read K as is
    # Q̃ (reduced path) or the prologue's Q_eff (expanded path) goes through a global scratch (or the stored Q_eff)
    # so the key loop's score dot reads it from shared memory. On the expanded path that removes ptxas's wgmma
    # serialisation (C7513) but measured 1-6% slower at d=64 (H100; docs/benchmarks.md, thirty-fourth session): off
    qt_scratch: bool = False
    band_block_n: int | None = None  # keys per tile where the exact band is (divides block_n); None: block_n
    fused_grouping: bool = False  # each program computes its block's grouping itself (no grouping launch)
    # "reduced": Q̃ K̃ᵀ, K̃ gathered per key tile; "expanded": Q_eff Kᵀ (see below). The field's default keeps
    # hand-built configs on the path their tiles name; ``fwd_config`` picks DEFAULT_GROUPED_QK ("expanded").
    grouped_qk: str = "reduced"
    # expanded path: each program forms its tile's Q_eff in its prologue (no regroup launch)
    qeff_prologue: bool = False
    # K and V tiles of block_n keys through TMA tensor descriptors (exact and expanded paths; Hopper+, aligned)
    kv_tma: bool = False
    # registers per thread the compiler may use (Triton's ``maxnreg``; None: its own choice). Two 8-warp
    # programs fit on an SM only at <= 128, three 4-warp ones at <= 168 (65536 registers per SM)
    maxnreg: int | None = None
    # the first plain key loop is warp-specialised (Triton's ``tl.range(..., warp_specialize=True)``: producer
    # warps issue the K/V loads, consumer warps the dots and the softmax); GPU only
    warp_specialize: bool = False
    # softmax of the plain key tiles: the row max taken on the raw scores and the scale applied after it, so exp2's
    # argument is one FMA per score (s·scale − m) instead of a multiply and a subtract (10-13% fewer instructions
    # per key tile in sm_90 SASS); False: the scores scaled first. ``fwd_config`` picks it (scale_after_max_rule)
    scale_after_max: bool = False
    # the exact window's σ² pass (expanded path): grouped − exact scores by one dot, (Q_eff − Q) Kᵀ, per band tile
    # instead of two (Q_eff − Q rounded once to the dot type). Timed: -2% to +6% (H200, twenty-first session); with
    # the pass stepping by block_n keys instead of band_block_n, 2-24% slower (H100, thirty-sixth session): off
    sigma2_diff: bool = False
    # the exact window's band segment: its key tiles that lie inside the band for every row of the query tile (with
    # W=128 and 128-row tiles the diagonal 128 keys, a third of the band's tiles without causal masking and half with
    # it) take the exact product alone, BLOCK_N keys at a time; the band's other tiles compute both products. False:
    # every band tile computes both. The same function (bit for bit where band_block_n equals block_n)
    band_exact_tiles: bool = False
    # the exact window's σ² pass: each row's squared errors added up in a [block_m, band_block_n] tile and summed over
    # the keys once after the pass (no row reductions per key tile), the count of attendable band keys closed-form
    # without a tensor mask; False: both summed per key tile. The pass measured 0.38-0.57 ms of a 2.0-3.5 ms call at
    # N=4096 (H100, thirty-sixth session: the c=0.5 − c=0 gap). This way the whole call was 3-14% faster at N=4096,
    # d=64/128, causal and not, rank1 and mean, and at 16384 except d=128 without causal masking (4-6% slower)
    # (H100, thirty-seventh session, no tensor mask): on; ``fwd_config`` turns it off with a tensor mask
    sigma2_deferred_sums: bool = True
    # the exact window with a correction: no σ² pass. The band segment's tiles run before the others, their band
    # entries only (exact), and take σ² from the two products they compute anyway; then the band tiles that hold
    # entries outside the band (not those inside it for every row) run again for those, grouped and corrected.
    # The same function; per band tile two score dots fewer, on the partial ones a score and a P·V dot more.
    # Timed: 3-15% slower at N=4096, about equal with sigma2_deferred_sums (H100, thirty-seventh session; ptxas
    # serialises the kernel's wgmma there, C7515). (A second accumulator for the grouped entries, merged once σ² was
    # known, spilled: 476-968 B at d=64.) Off. With it band_exact_tiles has no effect (every band tile runs first).
    band_first: bool = False
    # the order programs start in (every order gives the same output, bit for bit): "natural" (query tile on the
    # grid's first axis, first tile first), "reversed" (per head the last query tile first), "heavy_first" (heads on
    # the first axis, the last query tiles of every head before earlier ones), "auto" (``fwd_config``'s choice:
    # reversed with causal masking, natural without). With causal masking the last tiles have the most keys, so
    # reversed leaves the lightest programs to the last wave: faster than natural at 15 of 16 causal points on the
    # H200 (0.4-5.8%; G1, G2 mean / rank1, the window; d=64 / 128, N=4096 / 16384; heavy_first slower than reversed
    # at 15 of 16); docs/benchmarks.md, "the tile orders side by side" (twenty-second session)
    tile_order: str = "natural"
    # 1/exp_fma of each unmasked score tile's exp2 by a polynomial on the FMA pipe instead of the MUFU unit (0: none;
    # 2 or 4; relative error <= 7.5e-5, so ``fwd_config`` keeps it off for fp32 calls; ``distr_attn._exp2_tile``).
    # Measured slower on the H100 (2: 6-18%, 4: -1% to +10%; the loop is near issue-bound, not MUFU-bound;
    # docs/benchmarks.md, thirty-fourth session): off
    exp_fma: int = 0
    # FlashAttention-4's conditional rescaling (log2 units; 0.0: off, every key tile rescales acc and l). With a slack
    # s > 0 the rows' reference max moves only on key tiles where some row's max passes it by more than s, so the
    # others skip the multiply of the [block_m, d] accumulator; exp2's arguments stay <= s (P <= 2**s, which bf16 /
    # fp16 hold for s <= 15). The same function, rounded alike up to P's scale. Measured slower on the H100 (s=8 and 4:
    # 5-14%; Triton decides the branch for the whole program, a shared-memory reduction and a barrier per key tile;
    # docs/benchmarks.md, thirty-fifth session): off
    rescale_slack: float = 0.0


TILE_ORDERS = {"natural": 0, "reversed": 1, "heavy_first": 2}  # FwdConfig.tile_order -> the kernel's TILE_ORDER


EXP_FMA_SHARES = ("0", "2", "4")  # FwdConfig.exp_fma's values (as DISTR_FWD_EXP_FMA spells them)


DQ_TILE_ORDERS = ("natural", "reversed", "auto")  # BwdConfig.dq_tile_order


MAX_RESCALE_SLACK = 15.0  # P <= 2**slack must stay finite in fp16 (max 65504)


def parse_rescale_slack(value, name: str = "config.rescale_slack") -> float:
    """FwdConfig.rescale_slack from ``value`` (a number or its text): a float in [0, MAX_RESCALE_SLACK], else a
    ValueError naming ``name``."""
    try:
        slack = float(value)
    except (TypeError, ValueError):
        slack = float("nan")
    if isinstance(value, bool) or not 0.0 <= slack <= MAX_RESCALE_SLACK:
        raise ValueError(f"{name} must be a number of log2 units in [0, {MAX_RESCALE_SLACK:g}] (0: off), "
                         f"got {value!r}")
    return slack


def tile_order_code(order: str, causal: bool) -> int:
    """The kernel's TILE_ORDER for FwdConfig.tile_order ``order`` ("auto": reversed when ``causal``)."""
    if order == "auto":
        return TILE_ORDERS["reversed" if causal else "natural"]
    if order not in TILE_ORDERS:
        raise ValueError(f"config.tile_order must be one of {list(TILE_ORDERS) + ['auto']}, got {order!r}")
    return TILE_ORDERS[order]


# Grouped key loads gather K's columns in the query block's order. With K's natural
# [M, d] layout that is a strided, unvectorised load; a transposed copy made once per
# call turns it into contiguous row loads. The bench measures both (docs/benchmarks.md).
DEFAULT_K_LAYOUT = os.environ.get("DISTR_K_LAYOUT", "transposed")


# keys per band tile with an exact window at block_m=128, by (d <= 64): chosen on the H200 with
# scripts/compare_fwd_configs.py (docs/benchmarks.md, "exact window: band sub-tiles")
WINDOW_BAND_N = {True: 32, False: 64}


# How the grouped scores are computed. "reduced": the dot runs with inner dimension d/G on K̃, which
# each program gathers and sums from K per key tile (registers -> shared memory: about what the
# halved dot saves, docs/benchmarks.md "What we learned about why"). "expanded" (default): the same
# scores as Q_eff Kᵀ, Q_eff = Q̃ spread back over the d columns (formed once per call by ``regroup``):
# a full-d dot on K's tiles as loaded, the exact kernel's cost, any query tile for any grouping
# block_m. Faster at every measured shape (H200, N=4096: 2-9% without a window, 6-27% with one,
# 1.7-3x at block_m=32; docs/benchmarks.md, "grouped scores as Q_eff Kᵀ").
DEFAULT_GROUPED_QK = os.environ.get("DISTR_GROUPED_QK", "expanded")


def _env_flag(name: str, default: bool | None) -> bool | None:
    """A 0/1 environment switch (``default`` when unset); anything else is a named error, not a silent other
    path."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    if raw not in ("0", "1"):
        raise ValueError(f"the environment variable {name} must be 0 or 1, got {raw!r}")
    return raw == "1"


# Overrides of the tables below (None: the tables decide). qeff_prologue: the expanded path forms Q_eff in
# each program's prologue (one dot per grouping block with its fusion matrix) instead of a regroup launch
# before the kernel. kv_tma: K and V tiles come through TMA tensor descriptors (Hopper; exact and expanded
# paths; pointer loads where the strides do not allow them). docs/benchmarks.md, "Q_eff in the prologue, TMA".
DEFAULT_QEFF_PROLOGUE = _env_flag("DISTR_QEFF_PROLOGUE", None)
DEFAULT_KV_TMA = _env_flag("DISTR_KV_TMA", None)
DEFAULT_FWD_WS = _env_flag("DISTR_FWD_WS", None)  # FwdConfig.warp_specialize; None: the table
# FwdConfig.scale_after_max; None: scale_after_max_rule
DEFAULT_FWD_SCALE_AFTER_MAX = _env_flag("DISTR_FWD_SCALE_AFTER_MAX", None)
# FwdConfig.fused_grouping (None: the table, off). On the expanded path it also turns the Q_eff prologue on, and it
# acts only where a program's query tile is one grouping block (block_m = 128 on the GPU); G = 1 has no grouping.
DEFAULT_FUSED_GROUPING = _env_flag("DISTR_FWD_FUSED_GROUPING", None)
DEFAULT_FWD_SIGMA2_DIFF = _env_flag("DISTR_FWD_SIGMA2_DIFF", None)  # FwdConfig.sigma2_diff; None: the table (off)
# FwdConfig.sigma2_deferred_sums; None: the table (on)
DEFAULT_FWD_SIGMA2_DEFER = _env_flag("DISTR_FWD_SIGMA2_DEFERRED", None)
DEFAULT_FWD_BAND_FIRST = _env_flag("DISTR_FWD_BAND_FIRST", None)  # FwdConfig.band_first; None: the table (off)
DEFAULT_FWD_BAND_EXACT = _env_flag("DISTR_FWD_BAND_EXACT_TILES", None)  # FwdConfig.band_exact_tiles; None: the table
DEFAULT_FWD_TILE_ORDER = os.environ.get("DISTR_FWD_TILE_ORDER") or None  # FwdConfig.tile_order; None: the table
DEFAULT_FWD_EXP_FMA = os.environ.get("DISTR_FWD_EXP_FMA") or None  # FwdConfig.exp_fma ("0", "2", "4"); None: the table
# FwdConfig.rescale_slack (a number of log2 units, 0 to 15); None: the table
DEFAULT_FWD_RESCALE_SLACK = os.environ.get("DISTR_FWD_RESCALE_SLACK") or None
# DISTR_AUTO_SDPA=1: backend="auto" on CUDA runs calls that are plain attention on Q_eff (no exact window, no tensor
# mask, N == M or not causal) as torch's SDPA on Q_eff (``sdpa_engine.py``), the others on the fused Triton kernel.
# Off by default (H200, docs/benchmarks.md, "backend='sdpa'"): the operator alone was faster at N >= 4096 (forward
# 1-23%, forward+backward 13-28%), but whole-model eager prefill got slower (SmolLM2 4x4096 0.92x -> 0.83x exact,
# Llama-3.2-1B 0.90x -> 0.74x; cause not isolated), and a bf16 model's padded batch (a mask: the fused kernel) then
# no longer matched each sequence run alone (no mask: SDPA): the engines round differently, and the next layer's
# LSH grouping amplifies that.
DEFAULT_AUTO_SDPA = _env_flag("DISTR_AUTO_SDPA", False)
# The backward: the dQ kernel's epilogue maps dQ_eff back (BwdConfig.dq_epilogue; None: the table), and the
# forward keeps its Q_eff and column -> position map for the backward (else the backward forms them again).
DEFAULT_DQ_EPILOGUE = _env_flag("DISTR_DQ_EPILOGUE", None)
DEFAULT_KEEP_QEFF = _env_flag("DISTR_KEEP_QEFF", True)
DEFAULT_DQ_ATOMIC = _env_flag("DISTR_DQ_ATOMIC", None)  # BwdConfig.dq_atomic; None: the table
DEFAULT_BWD_KV_TMA = _env_flag("DISTR_BWD_KV_TMA", None)  # BwdConfig.kv_tma; None: the table
DEFAULT_BWD_Q_TMA = _env_flag("DISTR_BWD_Q_TMA", None)  # BwdConfig.q_tma; None: the table
DEFAULT_DQ_TILE_ORDER = os.environ.get("DISTR_BWD_DQ_TILE_ORDER") or None  # BwdConfig.dq_tile_order; None: the table


def windowed_sdpa_limits(attention_mask, N: int, M: int, needs_grad: bool) -> list[str]:
    """What keeps the SDPA engine from a call with an exact window (G > 1), one phrase each; [] when it runs it."""
    why = []
    if attention_mask is not None:
        why.append("attention_mask must be None")
    if N != M:
        why.append(f"N == M (got N={N}, M={M})")
    if needs_grad:
        why.append("no gradient (it is forward only: run under torch.no_grad() or train with backend='triton')")
    return why


def sdpa_runs(group_size: int, exact_window: int, attention_mask, causal: bool, N: int, M: int,
              needs_grad: bool) -> bool:
    """Whether the SDPA engine runs the call whole and lean: no tensor mask (it would build an [N, M] one), N == M when
    causal (SDPA's is_causal is top-left), and with an exact window (G > 1) ``windowed_sdpa_limits``."""
    if group_size > 1 and exact_window > 0:
        return not windowed_sdpa_limits(attention_mask, N, M, needs_grad)
    return attention_mask is None and (not causal or N == M)


def auto_runs_sdpa(group_size: int, exact_window: int, attention_mask, causal: bool, N: int, M: int) -> bool:
    """Whether ``backend="auto"`` on a CUDA tensor runs the call as SDPA on Q_eff (see DEFAULT_AUTO_SDPA): calls
    without an exact window that ``sdpa_runs``."""
    return bool(DEFAULT_AUTO_SDPA) and (group_size == 1 or exact_window == 0) \
        and sdpa_runs(group_size, exact_window, attention_mask, causal, N, M, needs_grad=False)


def scale_after_max_rule(head_dim: int, group_size: int, window: bool) -> bool:
    """FwdConfig.scale_after_max by shape: on for exact calls (G = 1) at d <= 64, where it measured 2-5% faster side
    by side (H200, bf16, N=4096 and 16384, five runs; docs/benchmarks.md, "The softmax's scale after the row max").
    Elsewhere its effect was -7% to +3% and depended on causal masking, but the form may not: a padded batch reaches
    the kernel as a tensor mask without ``causal``, the same sequence alone as ``causal`` without a mask, and the
    two must round alike, or a bf16 model's next LSH grouping tells them apart (``test_patched_model_on_cuda``)."""
    return head_dim <= 64 and group_size == 1 and not window


def interpreting() -> bool:
    """Whether CPU tensors go through the Triton interpreter (TRITON_INTERPRET=1). When it is on but cannot run
    these kernels with the installed Triton and NumPy, a RuntimeError says so (``interpreter_problem``)."""
    on = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if on and not torch.compiler.is_compiling():  # (checked when the eager call runs, not in a trace)
        problem = installed_triton_problem() or installed_interpreter_problem()
        if problem:
            raise RuntimeError(problem)
    return on


def interpreter_problem(triton_version: str, numpy_version: str) -> str | None:
    """Why the Triton interpreter of ``triton_version`` cannot run our kernels with NumPy ``numpy_version``, or
    None. Measured on the CPU: Triton 3.2-3.6's interpreter turns the 1-element array of a scalar tensor into an
    int (``tl.range(lo, hi)`` with computed bounds), which NumPy 2.4 made an error; with NumPy <= 2.3, or with
    Triton >= 3.7, the kernels run."""
    from packaging.version import Version

    if Version(triton_version) < Version("3.7") and Version(numpy_version) >= Version("2.4"):
        return (f"the Triton {triton_version} interpreter (TRITON_INTERPRET=1) cannot run the kernels with NumPy "
                f"{numpy_version}: install triton>=3.7 or numpy<2.4 (or unset TRITON_INTERPRET: CPU tensors then "
                "take the PyTorch reference)")
    return None


# The oldest Triton the kernels run on (pyproject.toml's floor): 3.3 cannot compile the forward (``tl.range`` has no
# ``warp_specialize`` before 3.4), and 3.2's interpreter formed the forward's Q_eff prologue wrong for a query tile
# past the first grouping block (``scripts/check_floors.sh``; docs/compatibility.md).
MIN_TRITON = "3.4"


def _triton_release() -> tuple[int, int]:
    """(major, minor) of the installed Triton; (0, 0) without one."""
    from packaging.version import Version

    try:
        import triton
    except ImportError:
        return (0, 0)
    return Version(triton.__version__).release[:2]


@functools.lru_cache(maxsize=None)
def sm90_ptxas_release() -> tuple[int, int] | None:
    """(major, minor) of the ptxas Triton compiles Hopper (sm_90) kernels with: its ``get_ptxas``, which follows
    TRITON_PTXAS_PATH / TRITON_PTXAS_BLACKWELL_PATH (Triton 3.9 takes its CUDA 13 ptxas, earlier releases a 12.x
    one). None where Triton cannot say."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            tool = get_ptxas(90)
        except TypeError:  # Triton 3.4: no architecture argument
            tool = get_ptxas()
        major, minor = str(tool.version).split(".")[:2]
        return int(major), int(minor)
    except Exception:  # noqa: BLE001  no NVIDIA backend, no ptxas, another Triton: the caller falls back
        return None


# ptxas from 13.3 serialises the wgmma of the d=64 kernels that form Q_eff in their prologue (C7513) and makes the
# prologue's window kernel spill; 12.8 (Triton 3.6), 12.9 and 13.1 do not (Triton 3.9's code compiled for sm_90 with
# each; 3.7.1 and 3.8.0 with their own, 12.x: docs/benchmarks.md, "Triton 3.9: Q_eff by its launch at d=64"). With
# Triton 3.9 and its ptxas 13.4 on an H100 the regroup launch beat the prologue at every shape timed (G=2 N=4096
# mean 2.955 ms against 3.476, 16384 causal 5.629 against 6.832; with a window 3.457 against 3.622; 3.6's prologue
# 2.776 ms). 3.9 given a 12.x ptxas (TRITON_PTXAS_BLACKWELL_PATH) takes the prologue by this rule, and its d=64 G=2
# kernels then ran at 0.97-1.04x 3.6's time (forty-fourth session).
PTXAS_SERIALISING_PROLOGUE = (13, 3)
# The forward's choice at d=64 on the GPU (``_expanded_config``): True: Q_eff in the prologue; False: by the regroup
# launch; None: not asked yet (``qeff_prologue_at_d64()`` fills it in)
QEFF_PROLOGUE_AT_D64: bool | None = None


def prologue_at_d64_rule(ptxas: tuple[int, int] | None, triton_release: tuple[int, int]) -> bool:
    """Whether the d=64 forward forms Q_eff in its prologue: where the sm_90 ptxas does not serialise it; where
    that ptxas is unknown, below Triton 3.9 (the first release to compile sm_90 with a CUDA 13 ptxas)."""
    if ptxas is not None:
        return ptxas < PTXAS_SERIALISING_PROLOGUE
    return triton_release < (3, 9)


def qeff_prologue_at_d64() -> bool:
    """``QEFF_PROLOGUE_AT_D64``, from ``prologue_at_d64_rule`` for the installed Triton and its ptxas on the first
    eager call (inside a torch.compile trace before any, the Triton release's rule, not kept: Dynamo would trace
    the ptxas query's subprocess instead of skipping it)."""
    global QEFF_PROLOGUE_AT_D64
    if QEFF_PROLOGUE_AT_D64 is None:
        if torch.compiler.is_compiling():
            return prologue_at_d64_rule(None, _triton_release())
        QEFF_PROLOGUE_AT_D64 = prologue_at_d64_rule(sm90_ptxas_release(), _triton_release())
    return QEFF_PROLOGUE_AT_D64


def triton_problem(triton_version: str) -> str | None:
    """Why the kernels cannot run on Triton ``triton_version``, or None."""
    from packaging.version import Version

    if Version(triton_version) < Version(MIN_TRITON):
        return (f"the Triton kernels need triton>={MIN_TRITON}, found {triton_version}: upgrade triton (and torch, "
                "whose CUDA builds pin it), or use backend='reference'")
    return None


@functools.lru_cache(maxsize=None)
def installed_triton_problem() -> str | None:
    import triton

    return triton_problem(triton.__version__)


@functools.lru_cache(maxsize=None)
def installed_interpreter_problem() -> str | None:
    import numpy
    import triton

    return interpreter_problem(triton.__version__, numpy.__version__)


def fwd_config(head_dim: int, group_size: int, grouping_block_m: int, *, exact_window: int = 0,
               interpret: bool | None = None, k_layout: str | None = None, grouped_qk: str | None = None,
               fp32: bool = False, masked: bool = False) -> FwdConfig:
    """Tile sizes for one call. G=1 takes the exact rows of ``_reduced_config``'s table;
    ``grouped_qk="expanded"`` the same tiles (``_expanded_config``); ``"reduced"`` its own rows. fp32
    inputs (a correctness path: fp32 dots) take half-width key tiles so that they fit in shared memory
    (128-key fp32 tiles asked for 246 KB on the H200). ``masked`` (a tensor attention mask: its [block_m,
    block_n] tile is pipelined too) caps the key tiles at 64: with 128 keys at 64 < d <= 128 the kernel asked
    for 229-360 KB of shared memory (the H200 has 227 KB; ``scripts/kernel_resources.py --mask float``), 115-197 KB
    with 64. The softmax's form: ``scale_after_max_rule``. Memoised on its arguments and the
    DEFAULT_* switches it reads (host time per call matters in small layers; docs/benchmarks.md, "Kernel launches
    without Triton's binder")."""
    interpret = interpreting() if interpret is None else interpret
    at_d64 = interpret or qeff_prologue_at_d64()  # the interpreter keeps the prologue (and has no ptxas to ask)
    return _fwd_config(head_dim, group_size, grouping_block_m, exact_window, interpret, k_layout, grouped_qk, fp32,
                       masked, DEFAULT_GROUPED_QK, DEFAULT_K_LAYOUT, DEFAULT_QEFF_PROLOGUE, DEFAULT_KV_TMA,
                       DEFAULT_FWD_WS, DEFAULT_FWD_SCALE_AFTER_MAX, DEFAULT_FUSED_GROUPING, DEFAULT_FWD_SIGMA2_DIFF,
                       DEFAULT_FWD_TILE_ORDER, DEFAULT_FWD_EXP_FMA, DEFAULT_FWD_RESCALE_SLACK, DEFAULT_FWD_BAND_EXACT,
                       DEFAULT_FWD_SIGMA2_DEFER, DEFAULT_FWD_BAND_FIRST, at_d64)


@functools.lru_cache(maxsize=1024)
def _fwd_config(head_dim, group_size, grouping_block_m, exact_window, interpret, k_layout, grouped_qk, fp32, masked,
                DEFAULT_GROUPED_QK, DEFAULT_K_LAYOUT, DEFAULT_QEFF_PROLOGUE, DEFAULT_KV_TMA,  # noqa: N803
                DEFAULT_FWD_WS, DEFAULT_FWD_SCALE_AFTER_MAX, DEFAULT_FUSED_GROUPING,
                DEFAULT_FWD_SIGMA2_DIFF, DEFAULT_FWD_TILE_ORDER, DEFAULT_FWD_EXP_FMA,
                DEFAULT_FWD_RESCALE_SLACK, DEFAULT_FWD_BAND_EXACT, DEFAULT_FWD_SIGMA2_DEFER,
                DEFAULT_FWD_BAND_FIRST, prologue_at_d64) -> FwdConfig:
    """``fwd_config``'s body; the switches come in as arguments (so the memo sees them) under their global names."""
    mode = grouped_qk or DEFAULT_GROUPED_QK
    if mode not in ("reduced", "expanded"):
        src = "grouped_qk" if grouped_qk else "the environment variable DISTR_GROUPED_QK"
        raise ValueError(f"{src} must be 'reduced' or 'expanded', got {mode!r}")
    layout = k_layout or DEFAULT_K_LAYOUT
    if layout not in ("transposed", "natural"):
        src = "k_layout" if k_layout else "the environment variable DISTR_K_LAYOUT"
        raise ValueError(f"{src} must be 'transposed' or 'natural', got {layout!r}")
    window = exact_window > 0 and group_size > 1
    if group_size > 1 and mode == "expanded":
        cfg = _expanded_config(head_dim, window, interpret, group_size, prologue_at_d64)
    else:
        cfg = _reduced_config(head_dim, group_size, grouping_block_m, window, interpret, layout)
    if group_size == 1:  # exact: K/V through TMA at d<=64 (H200, N=4096: 3-5% faster; 7-10% slower at d=128);
        # 128-key tiles on 8 warps at 64 < d <= 128 (2-5% faster)
        cfg = replace(cfg, kv_tma=head_dim <= 64)
        if not interpret and 64 < head_dim <= 128:
            cfg = replace(cfg, block_n=128, num_warps=8)
    cfg = replace(cfg, scale_after_max=scale_after_max_rule(head_dim, group_size, window), tile_order="auto")
    if DEFAULT_QEFF_PROLOGUE is not None:
        cfg = replace(cfg, qeff_prologue=cfg.grouped_qk == "expanded" and DEFAULT_QEFF_PROLOGUE)
    if DEFAULT_KV_TMA is not None:
        cfg = replace(cfg, kv_tma=DEFAULT_KV_TMA)
    if DEFAULT_FWD_WS is not None:
        cfg = replace(cfg, warp_specialize=DEFAULT_FWD_WS)
    if DEFAULT_FWD_SCALE_AFTER_MAX is not None:
        cfg = replace(cfg, scale_after_max=DEFAULT_FWD_SCALE_AFTER_MAX)
    if DEFAULT_FWD_SIGMA2_DIFF is not None:
        cfg = replace(cfg, sigma2_diff=DEFAULT_FWD_SIGMA2_DIFF)
    if DEFAULT_FWD_BAND_EXACT is not None:
        cfg = replace(cfg, band_exact_tiles=DEFAULT_FWD_BAND_EXACT)
    if masked:  # the counts are summed per tile anyway, and the deferred squares spilled more (d=64 padding mask:
        # 188 / 224 B against 80 / 192 B, Triton 3.6 for sm_90; not timed on the GPU)
        cfg = replace(cfg, sigma2_deferred_sums=False)
    if DEFAULT_FWD_SIGMA2_DEFER is not None:
        cfg = replace(cfg, sigma2_deferred_sums=DEFAULT_FWD_SIGMA2_DEFER)
    if DEFAULT_FWD_BAND_FIRST is not None:
        cfg = replace(cfg, band_first=DEFAULT_FWD_BAND_FIRST)
    if DEFAULT_FWD_TILE_ORDER is not None:
        if DEFAULT_FWD_TILE_ORDER not in (*TILE_ORDERS, "auto"):
            raise ValueError(f"the environment variable DISTR_FWD_TILE_ORDER must be one of "
                             f"{list(TILE_ORDERS) + ['auto']}, got {DEFAULT_FWD_TILE_ORDER!r}")
        cfg = replace(cfg, tile_order=DEFAULT_FWD_TILE_ORDER)
    if DEFAULT_FWD_EXP_FMA is not None:
        if DEFAULT_FWD_EXP_FMA not in EXP_FMA_SHARES:
            raise ValueError(f"the environment variable DISTR_FWD_EXP_FMA must be one of {list(EXP_FMA_SHARES)}, "
                             f"got {DEFAULT_FWD_EXP_FMA!r}")
        cfg = replace(cfg, exp_fma=int(DEFAULT_FWD_EXP_FMA))
    if DEFAULT_FWD_RESCALE_SLACK is not None:
        cfg = replace(cfg, rescale_slack=parse_rescale_slack(DEFAULT_FWD_RESCALE_SLACK,
                                                             "the environment variable DISTR_FWD_RESCALE_SLACK"))
    if DEFAULT_FUSED_GROUPING is not None and group_size > 1:
        cfg = with_fused_grouping(cfg, head_dim, grouping_block_m, DEFAULT_FUSED_GROUPING)
    if masked and not interpret and cfg.block_n > 64:
        cfg = replace(cfg, block_n=64, band_block_n=None if cfg.band_block_n is None else min(cfg.band_block_n, 64))
    if fp32:
        cfg = replace(cfg, exp_fma=0)
    if fp32 and not interpret and cfg.block_n > 32:
        bn = cfg.block_n // 2 if head_dim <= 64 else 32
        cfg = replace(cfg, block_n=bn, band_block_n=None if cfg.band_block_n is None else min(cfg.band_block_n, bn))
    return cfg


def with_fused_grouping(cfg: FwdConfig, head_dim: int, grouping_block_m: int, on: bool = True) -> FwdConfig:
    """``cfg`` with each program computing its own block's grouping (``on``) or not. The expanded path then forms
    Q_eff in its prologue too; where its tile is not one grouping block (block_m != ``grouping_block_m``) or the
    prologue's [d, d] fusion matrix is too large (d > 128), ``cfg`` stays as it is."""
    if not on:
        return replace(cfg, fused_grouping=False)
    if cfg.grouped_qk == "expanded":
        if cfg.block_m != grouping_block_m or head_dim > 128:
            return cfg
        return replace(cfg, fused_grouping=True, qeff_prologue=True)
    return replace(cfg, fused_grouping=True)


def _reduced_config(head_dim: int, group_size: int, grouping_block_m: int, window: bool, interpret: bool,
                    layout: str) -> FwdConfig:
    """grouped_qk="reduced" (and G=1 at block_m=128).

    Grouped calls at block_m=128 take 128-key tiles and Q̃ from shared memory (``qt_scratch``):
    1.04-1.16x faster than 64-key tiles at N=4096-16384 (docs/benchmarks.md, "v7"). With an exact
    window only the tiles that meet the band hold two score tiles; they step by ``band_block_n``
    (``WINDOW_BAND_N``) inside the same kernel, so the plain tiles keep the 128-key tiles; at d<=64 the
    window takes 8 warps (H200, N=4096: 5.76 ms against 6.28 with 4 warps and 6.44 for the earlier
    64-key table; docs/benchmarks.md, "exact window: band sub-tiles").
    """
    block_m = 128 if group_size == 1 else grouping_block_m
    if interpret:  # band sub-tiles of 16 keys so CPU tests exercise the split
        return FwdConfig(block_m=block_m, block_n=32, num_warps=4, num_stages=1, k_layout=layout,
                         qt_scratch=group_size > 1, band_block_n=16 if window else None)
    if block_m <= 32:
        return FwdConfig(block_m, 64, num_warps=2 if head_dim <= 64 else 4, num_stages=3, k_layout=layout)
    if block_m == 64:
        return FwdConfig(block_m, 64, num_warps=4, num_stages=3, k_layout=layout)
    if head_dim <= 128 and group_size > 1:
        band_n = WINDOW_BAND_N[head_dim <= 64] if window else None
        return FwdConfig(block_m, 128, num_warps=4 if head_dim <= 64 and not window else 8, num_stages=3,
                         k_layout=layout, qt_scratch=True, band_block_n=band_n)
    if head_dim <= 64:
        return FwdConfig(block_m, 64, num_warps=8 if window else 4, num_stages=3, k_layout=layout)
    if head_dim <= 128:
        return FwdConfig(block_m, 64, num_warps=8, num_stages=3, k_layout=layout)
    return FwdConfig(block_m, 32, num_warps=8, num_stages=2, k_layout=layout)


def _expanded_config(head_dim: int, window: bool, interpret: bool, group_size: int,
                     prologue_at_d64: bool = True) -> FwdConfig:
    """grouped_qk="expanded": the exact (G=1) kernel's tiles, whatever the grouping block_m; with a
    window the tiles that meet the band step by 32 keys (two score tiles live) on 8 warps. Q_eff in the
    prologue and TMA tiles where they measured faster (below).
    The interpreter takes 64-row tiles, so CPU tests cover tiles holding several grouping blocks
    (block_m=32) and tiles inside one (block_m=128). ``prologue_at_d64``: ``qeff_prologue_at_d64()`` (off where
    the sm_90 ptxas serialises the d=64 prologue's wgmma: ptxas >= 13.3, which Triton 3.9 uses)."""
    # Q_eff in the prologue: 3-10% faster than the regroup launch, except with a window at d<=64 (29% slower
    # non-causal: two score tiles, Q, Q_eff and the fusion matrix live at once). TMA K/V tiles: 0-5% faster at
    # d<=64 with the prologue, 5-10% slower at d=128 and with a window (H200, N=4096; docs/benchmarks.md,
    # "Q_eff in the prologue, TMA"). d=256 (not timed) keeps the regroup launch: its [256, 256] fusion matrix
    # would hold 256 fp32 registers per thread on 8 warps.
    # With a window at d=64 the prologue fits two 8-warp programs per SM only under a 128-register cap
    # (scripts/kernel_resources.py: 167 registers uncapped, no spill at 128): capped, 3% faster than the regroup
    # launch non-causal and 24% causal (H200, N=4096: 3.610 / 2.408 ms against 3.731 / 3.181; docs/benchmarks.md,
    # "Register caps and kernel-stored positions"). d=32 (not timed) keeps the regroup launch there.
    # At 64 < d <= 128, G=2, no window, Q_eff by one launch before the kernel (``distr_attn.QEFF_LAUNCH``: grouping
    # and Q_eff rows together) beat the prologue: rank1 4-7%, mean 0-4% faster (H200, N=4096, two runs; the prologue
    # kept at d=64, where it was 4-5% faster, and with a window; docs/benchmarks.md, "Q_eff by one launch at d=128").
    capped_window = window and 32 < head_dim <= 64
    launch_d128 = 64 < head_dim <= 128 and group_size == 2 and not window
    launch_d64 = 32 < head_dim <= 64 and not prologue_at_d64
    opts = dict(grouped_qk="expanded",
                qeff_prologue=head_dim <= 128 and (not window or head_dim > 64 or capped_window) and not launch_d128
                and not launch_d64,
                kv_tma=head_dim <= 64 and not window, maxnreg=128 if capped_window and not interpret else None)
    if interpret:
        return FwdConfig(64, 32, 4, 1, "natural", band_block_n=16 if window else None, **opts)
    if head_dim > 128:
        return FwdConfig(128, 32, 8, 2, "natural", **opts)
    band = 32 if window else None
    warps = 8 if head_dim > 64 or window else 4
    # 128-key tiles at 64 < d <= 128 without a window: G2 mean 4-6% faster, rank1 within 1% (H200, N=4096)
    block_n = 128 if head_dim > 64 and not window else 64
    return FwdConfig(128, block_n, warps, 3, "natural", band_block_n=band, **opts)


@dataclass(frozen=True)
class BandConfig:
    """Tiles of the windowed SDPA engine's band-and-merge kernel (``window_merge.py``)."""
    block_m: int  # query rows per program
    block_n: int  # keys per tile of the band loop
    num_warps: int
    num_stages: int
    # each row's squared grouped-minus-exact scores added up in a [block_m, block_n] tile and summed over the keys
    # once after the band loop (as the fused kernel's FwdConfig.sigma2_deferred_sums); False: summed per key tile.
    # Timed on the H100 (fortieth session): the band kernel alone 11-22% slower at its default tiles, whole windowed
    # SDPA-engine calls at N=4096 up to 6% slower (15 of 16 pairs slower; docs/benchmarks.md). Off.
    deferred_sums: bool = False


# env DISTR_BAND_TILES="block_m,block_n,num_warps,num_stages" overrides the table
_BAND_TILES_ENV = os.environ.get("DISTR_BAND_TILES")
# env DISTR_BAND_SIGMA2_DEFERRED=1/0 overrides BandConfig.deferred_sums (None: the table's)
DEFAULT_BAND_DEFERRED = _env_flag("DISTR_BAND_SIGMA2_DEFERRED", None)


def parse_band_tiles(text: str, name: str = "tiles") -> BandConfig:
    """'block_m,block_n,num_warps,num_stages' (4 positive integers) -> BandConfig."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"{name} must be 'block_m,block_n,num_warps,num_stages' (4 positive integers), "
                         f"got {text!r}")
    return BandConfig(*(int(p) for p in parts))


def band_config(causal: bool, *, interpret: bool | None = None) -> BandConfig:
    """The band kernel's tiles (H200, ``scripts/bench_window_sdpa.py``, 8 tiles side by side at d=64 and 128): 64 query
    rows x 32 keys with causal masking (a program's band spans 6 such tiles), 64 x 64 without (5-12% faster there;
    20% slower causal at d=64); 4 warps, 2 stages. 32 x 32 under the interpreter."""
    if _BAND_TILES_ENV:
        cfg = parse_band_tiles(_BAND_TILES_ENV, "DISTR_BAND_TILES")
    elif interpreting() if interpret is None else interpret:
        cfg = BandConfig(32, 32, 4, 1)
    else:
        cfg = BandConfig(64, 32 if causal else 64, 4, 2)
    if DEFAULT_BAND_DEFERRED is not None:
        cfg = replace(cfg, deferred_sums=DEFAULT_BAND_DEFERRED)
    return cfg


@dataclass(frozen=True)
class BwdConfig:
    """Launch configuration of the backward (``distr_bwd.py``).

    The backward works on precomputed fused queries Q_eff, so its tiles are independent of
    the grouping ``block_m``. dK/dV kernel: one program holds ``kv_block_n`` keys and streams
    ``kv_block_m`` query rows; dQ kernel (and the per-row preprocess): one program holds
    ``q_block_m`` query rows and streams ``q_block_n`` keys. With an exact window the tiles that
    meet the band ("mixed": both the exact and the grouped product, two score tiles) stream
    sub-tiles instead: ``kv_band_m`` query rows (dK/dV) and ``q_band_n`` keys (dQ and the
    preprocess's σ²/κ); each must divide its block tile, None = the block tile itself.
    ``kv_split``: with GQA, how many programs share one kv head's query heads (each writes a
    partial dK/dV, summed after); None picks it from the GPU's SM count (1 when the grid
    already fills the GPU).
    """
    kv_block_m: int
    kv_block_n: int
    kv_warps: int
    kv_stages: int
    q_block_m: int
    q_block_n: int
    q_warps: int
    q_stages: int
    kv_split: int | None = None
    kv_band_m: int | None = None
    q_band_n: int | None = None
    # G > 1: the dQ kernel maps dQ_eff back to dQ in its epilogue (one dot per output chunk with the grouping
    # block's fusion matrix) instead of a regroup launch after it (DISTR_DQ_EPILOGUE=0/1 overrides)
    dq_epilogue: bool = True
    # no exact window, dQ and dK/dV both wanted: the dK/dV kernel also adds each tile's dQ_eff into an fp32
    # buffer with atomics (FlashAttention-2's way: no dQ kernel, whose S and dP recompute is 3 of the backward's
    # 7 tile products), then a cast (G = 1) or a regroup launch (G > 1) gives dQ. Not bitwise reproducible
    # (the order of the fp32 adds varies), so ``torch.use_deterministic_algorithms(True)`` turns it off
    dq_atomic: bool = False
    # the dK/dV kernel's plain tiles load Q_eff and dO through tensor descriptors (the copy engine) instead of
    # pointer loads, where the strides allow (16-byte aligned, unit stride along d) and the GPU has TMA
    kv_tma: bool = False
    # the dQ kernel's plain key tiles load K and V through tensor descriptors (as ``kv_tma``)
    q_tma: bool = False
    # the order the dQ kernel's programs start in, as FwdConfig.tile_order but "natural", "reversed" or "auto" (the
    # same gradients bit for bit; each program owns its query tile). Timed (causal, N=4096): reversed 1-5% slower at
    # d=128, within noise elsewhere, so natural. (The dK/dV
    # kernel's first key tiles are its heaviest with causal masking, so its natural order is heaviest first already)
    dq_tile_order: str = "natural"

    @property
    def band_m(self) -> int:
        """Query rows per mixed dK/dV tile."""
        return self.kv_block_m if self.kv_band_m is None else self.kv_band_m

    @property
    def band_n(self) -> int:
        """Keys per mixed dQ / preprocess tile."""
        return self.q_block_n if self.q_band_n is None else self.q_band_n


# keys from which the d <= 64 dQ kernel takes 128-row tiles on 8 warps (H200, N = M = 16384: 3-7% faster than
# (64, 64, 4, 2) for G = 1 and G2 mean; docs/benchmarks.md, "Backward tiles at N=16384, d=64")
LONG_KEYS = 16384


def bwd_config(head_dim: int, group_size: int = 2, exact_window: int = 0, *, causal: bool = False, keys: int = 0,
               fp32: bool = False, masked: bool = False, interpret: bool | None = None) -> BwdConfig:
    """Backward tiles for one call (``keys``: M, the number of keys); the interpreter uses 32x32 tiles (16-wide
    band sub-tiles with a window, so CPU tests exercise the split).

    GPU (H100, bf16): the fastest of 10 dK/dV and 10 dQ candidates per (d, variant), timed at
    N=4096 with ``scripts/tune_backward.py`` (docs/benchmarks.md, "Backward tile tuning": the
    sweep's table itself was not recorded); causal and non-causal agreed within 2%. The earlier
    untimed table (16-row dK/dV tiles at d=128) was 3.3x slower in the dK/dV kernel. At d <= 64 without a
    window: the dQ kernel takes 128-row tiles from ``LONG_KEYS`` keys, and causal calls sum dQ with atomics in
    the dK/dV kernel (``dq_atomic``; H200: forward+backward 2-4% faster causal at N = 4096 and 16384, but 2-3%
    slower non-causal and 25-45% slower at d = 128, where the fused kernel spills; docs/benchmarks.md,
    "dQ by atomics"). At 64 < d <= 128, causal, without a tensor mask (``masked``) the dK/dV kernel loads Q_eff and
    dO through tensor descriptors (``kv_tma``; H200: forward+backward 3-5% faster; docs/benchmarks.md, "Tensor
    descriptors in the backward").

    With an exact window every tile runs at the no-window tiles except those that meet the band:
    they compute both products (two score tiles), so they stream sub-tiles (``kv_band_m`` rows,
    ``q_band_n`` keys). d<=64: swept on the H200 (``tune_backward.py --variants "G=2 rank1 W128 c.5"
    --d 64``, causal): dK/dV band 16 best (4.07 ms), dQ band 32 (3.27 ms against 3.75-3.98 for 16 and
    64); d<=128: band 32 (not swept; docs/benchmarks.md, "exact window: band sub-tiles").

    d=256 is untuned (largest tiles that compile without spills). fp32 inputs (a correctness
    path: fp32 dots) take half-height tiles.
    """
    if DEFAULT_DQ_TILE_ORDER is not None and DEFAULT_DQ_TILE_ORDER not in DQ_TILE_ORDERS:  # (the interpreter too)
        raise ValueError(f"the environment variable DISTR_BWD_DQ_TILE_ORDER must be one of {DQ_TILE_ORDERS}, "
                         f"got {DEFAULT_DQ_TILE_ORDER!r}")
    interpret = interpreting() if interpret is None else interpret
    window = exact_window > 0 and group_size > 1
    if interpret:
        cfg = BwdConfig(32, 32, 4, 1, 32, 32, 4, 1)
        return replace(cfg, kv_band_m=16, q_band_n=16) if window else cfg
    if head_dim <= 64:
        cfg, band = BwdConfig(32, 128, 4, 3, 64, 64, 4, 2), (16, 32)
        if not window:
            cfg = replace(cfg, dq_atomic=bool(causal))
            if keys >= LONG_KEYS:
                cfg = replace(cfg, q_block_m=128, q_warps=8)
    elif head_dim <= 128:
        cfg, band = BwdConfig(64, 64, 4, 2, 64, 64, 4, 2), (32, 32)
        # descriptor loads in the dK/dV kernel: causal without a tensor mask only (ptxas crashed on the other builds)
        cfg = replace(cfg, kv_tma=causal and not masked and not fp32)
    else:
        cfg, band = BwdConfig(16, 32, 8, 1, 32, 32, 8, 1), (16, 16)
    if window:  # (kv_band_m, q_band_n); fp32's halving below touches the held dimensions only
        cfg = replace(cfg, kv_band_m=band[0], q_band_n=band[1])
    if fp32:
        cfg = replace(cfg, kv_block_n=max(32, cfg.kv_block_n // 2), q_block_m=max(16, cfg.q_block_m // 2))
    if DEFAULT_DQ_EPILOGUE is not None:
        cfg = replace(cfg, dq_epilogue=DEFAULT_DQ_EPILOGUE)
    if DEFAULT_DQ_ATOMIC is not None:
        cfg = replace(cfg, dq_atomic=DEFAULT_DQ_ATOMIC)
    if DEFAULT_BWD_KV_TMA is not None:
        cfg = replace(cfg, kv_tma=DEFAULT_BWD_KV_TMA)
    if DEFAULT_BWD_Q_TMA is not None:
        cfg = replace(cfg, q_tma=DEFAULT_BWD_Q_TMA)
    if DEFAULT_DQ_TILE_ORDER is not None:
        cfg = replace(cfg, dq_tile_order=DEFAULT_DQ_TILE_ORDER)
    return cfg

"""``ops/launch.py``: the launch memo's key and argument list, on a stand-in for a JIT function (no GPU needed:
the memo's hits call the compiled kernel Triton returned, which this fake records). The GPU side, that a memo hit
launches the same kernel with the same arguments as Triton's own path, is ``test_fast_launch_matches_plain_gpu``."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

import distr_patch.ops.launch as L


class _Param:
    def __init__(self, is_constexpr):
        self.is_constexpr = is_constexpr


class _Compiled:
    """What Triton's run returns: records launches through ``run``."""
    function = "fn-handle"
    packed_metadata = "packed"

    def __init__(self):
        self.launches = []

    def launch_metadata(self, grid, stream, *args):
        return ("meta", grid)

    @property
    def run(self):
        return lambda *a: self.launches.append(a)


class _FakeJit:
    """A JIT function of ``n`` runtime parameters followed by constexprs ``names`` (``args_first=False``: the
    binder puts a constexpr first, which the memo must refuse)."""

    def __init__(self, n, names, args_first=True):
        self.n, self.names = n, names
        self.params = [_Param(False)] * n + [_Param(True)] * len(names)
        if not args_first:
            self.params = [_Param(True)] + self.params[:-1]
        self.args_first = args_first
        self.pre_run_hooks = []
        self.device_caches = {0: (None, None, None, None, self._binder)}
        self.plain = []  # (grid, args, meta) of every call that took Triton's path
        self.compiled = _Compiled()

    def _binder(self, *args, **meta):
        bound = {f"a{i}": a for i, a in enumerate(args)}
        bound.update({k: meta[k] for k in self.names})
        if not self.args_first:
            bound = {"c": meta[self.names[0]], **bound}
        return bound, [], {}

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.plain.append((grid, args, meta))
            return self.compiled
        return run


class _Knobs:
    """Stand-in for triton.knobs (the fields launch() reads), so these tests do not depend on the Triton release."""
    class runtime:
        debug = False
        add_stages_inspection_hook = None
        launch_enter_hook = "enter-hook"
        launch_exit_hook = "exit-hook"

    class compilation:
        instrumentation_mode = ""


@pytest.fixture
def memo(monkeypatch):
    monkeypatch.setattr(L, "FAST_LAUNCH", True)
    monkeypatch.setattr(L, "knobs", _Knobs)
    monkeypatch.setattr(L, "_device_and_stream", lambda: (0, "stream"))
    monkeypatch.setattr(L, "_memos", {})


def _args(gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    x = torch.randn(64, generator=g)
    return [x, torch.empty(8, dtype=torch.int32), 16, 17, 0.5, 1]


def test_memo_hit_launches_the_compiled_kernel_with_the_bound_arguments(memo):
    fn = _FakeJit(6, ["BLOCK", "FLAG"])
    args = _args()
    L.launch(fn, (3, 2), *args, BLOCK=64, FLAG=True, num_warps=4)
    assert len(fn.plain) == 1 and not fn.compiled.launches  # the first call is Triton's
    args2 = _args(1)  # new tensors (aligned), another float value: the same specialisation
    args2[4] = 2.5
    L.launch(fn, (3, 2), *args2, BLOCK=64, FLAG=True, num_warps=4)
    assert len(fn.plain) == 1
    (call,) = fn.compiled.launches
    assert call[:9] == (3, 2, 1, "stream", "fn-handle", "packed", ("meta", (3, 2)), "enter-hook", "exit-hook")
    assert call[9:15] == tuple(args2) and call[9] is args2[0]
    assert call[15:] == (64, True)  # the constexprs, in the binder's order


@pytest.mark.parametrize("change", ["misaligned", "dtype", "int value", "int to float", "int to bool",
                                    "constexpr", "num_warps", "device"])
def test_memo_misses_on_whatever_triton_may_specialise_on(memo, monkeypatch, change):
    fn = _FakeJit(6, ["BLOCK", "FLAG"])
    meta = dict(BLOCK=64, FLAG=True, num_warps=4)
    L.launch(fn, (1,), *_args(), **meta)
    args = _args()
    if change == "misaligned":
        args[0] = torch.randn(65)[1:]  # 4-byte offset: no longer 16-byte aligned
    elif change == "dtype":
        args[0] = args[0].double()
    elif change == "int value":
        args[2] = 32  # still divisible by 16, but the memo keys on the value itself
    elif change == "int to float":
        args[5] = 1.0  # == 1 in Python, another type for Triton
    elif change == "int to bool":
        args[5] = True
    elif change == "constexpr":
        meta["BLOCK"] = 128
    elif change == "num_warps":
        meta["num_warps"] = 8
    else:
        monkeypatch.setattr(L, "_device_and_stream", lambda: (1, "stream"))
    L.launch(fn, (1,), *args, **meta)
    assert len(fn.plain) == 2 and not fn.compiled.launches


def test_memo_refuses_binders_that_do_not_list_the_arguments_first(memo):
    fn = _FakeJit(6, ["BLOCK"], args_first=False)
    for _ in range(3):
        L.launch(fn, (1,), *_args(), BLOCK=64)
    assert len(fn.plain) == 3 and not fn.compiled.launches


def test_plain_path_under_hooks_the_interpreter_compile_or_the_switch(memo, monkeypatch):
    fn = _FakeJit(6, ["BLOCK"])
    fn.pre_run_hooks.append(lambda *a, **k: None)
    for _ in range(2):
        L.launch(fn, (1,), *_args(), BLOCK=64)
    assert len(fn.plain) == 2 and not fn.compiled.launches
    fn.pre_run_hooks.clear()
    caches = fn.device_caches
    del fn.device_caches  # as the interpreter's kernels
    for _ in range(2):
        L.launch(fn, (1,), *_args(), BLOCK=64)
    fn.device_caches = caches
    with monkeypatch.context() as mp:
        mp.setattr(torch.compiler, "is_compiling", lambda: True)  # as while torch.compile traces
        for _ in range(2):
            L.launch(fn, (1,), *_args(), BLOCK=64)
    with monkeypatch.context() as mp:
        mp.setattr(L, "knobs", None)  # a Triton before knobs (3.4)
        for _ in range(2):
            L.launch(fn, (1,), *_args(), BLOCK=64)
    with monkeypatch.context() as mp:
        mp.setattr(_Knobs.runtime, "add_stages_inspection_hook", lambda: ("key", "hash"))
        for _ in range(2):
            L.launch(fn, (1,), *_args(), BLOCK=64)
    for _ in range(2):  # a grid computed from the meta-parameters
        L.launch(fn, lambda meta: (1,), *_args(), BLOCK=64)
    monkeypatch.setattr(L, "FAST_LAUNCH", False)
    for _ in range(2):
        L.launch(fn, (1,), *_args(), BLOCK=64)
    assert len(fn.plain) == 14 and not fn.compiled.launches


def test_every_launch_asks_for_fp_fusion_but_under_compile(memo, monkeypatch):
    """Triton 3.10 turns FMA contraction off by default; the kernels keep the fusion they were checked with, except
    under torch.compile, whose capture of a kernel call takes no such option."""
    fn = _FakeJit(6, ["BLOCK"])
    L.launch(fn, (1,), *_args(), BLOCK=64)
    assert fn.plain[-1][2] == {"BLOCK": 64, "enable_fp_fusion": True}
    L.launch(fn, (1,), *_args(), BLOCK=64, enable_fp_fusion=False)  # a caller's own choice stands
    assert fn.plain[-1][2]["enable_fp_fusion"] is False
    del fn.device_caches  # the interpreter's path
    L.launch(fn, (1,), *_args(), BLOCK=64)
    assert fn.plain[-1][2]["enable_fp_fusion"] is True
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    L.launch(fn, (1,), *_args(), BLOCK=64)
    assert fn.plain[-1][2] == {"BLOCK": 64}


@pytest.mark.parametrize("name", ["DISTR_FAST_LAUNCH", "DISTR_FAST_LAUNCH_RAW"])
def test_misspelled_switch_is_a_named_error(name):
    env = {**os.environ, name: "yes"}
    run = subprocess.run([sys.executable, "-c", "import distr_patch.ops"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode != 0 and f"the environment variable {name} must be 0 or 1, got 'yes'" in run.stderr


def test_rebound_global_takes_triton_path(memo):
    """Triton refuses to run a kernel after a global it read was rebound; a memo hit must not hide that."""
    fn = _FakeJit(6, ["BLOCK"])
    scope = {"SCALE": 1.0}
    fn.used_global_vals = {("SCALE", 0): (1.0, scope)}
    for _ in range(2):
        L.launch(fn, (1,), *_args(), BLOCK=64)
    assert len(fn.plain) == 1 and len(fn.compiled.launches) == 1
    scope["SCALE"] = 2.0
    L.launch(fn, (1,), *_args(), BLOCK=64)
    assert len(fn.plain) == 2 and len(fn.compiled.launches) == 1


def test_memo_starts_over_past_its_size(memo, monkeypatch):
    monkeypatch.setattr(L, "MAX_ENTRIES", 2)
    fn = _FakeJit(6, ["BLOCK"])
    for block in (16, 32, 64):  # the third key clears the first two
        L.launch(fn, (1,), *_args(), BLOCK=block)
    L.launch(fn, (1,), *_args(), BLOCK=16)
    assert len(fn.plain) == 4
    L.launch(fn, (1,), *_args(), BLOCK=64)
    assert len(fn.plain) == 4 and len(fn.compiled.launches) == 1


def test_host_helpers_match_triton():
    for a in range(0, 300):
        for b in (1, 16, 32, 64, 128):
            assert L.cdiv(a, b) == triton.cdiv(a, b)
    for n in range(1, 600):
        assert L.next_power_of_2(n) == triton.next_power_of_2(n)


CUDA = torch.cuda.is_available()
GPU_CASES = [  # d, distr_attention kwargs, backend: TMA descriptors (d=64), the grouping launch, Q_eff by one launch
    (64, dict(group_size=1), "triton"),  # (d=128), the window's band, the SDPA engine's pieces
    (64, dict(group_size=2, fusion="mean"), "triton"),
    (128, dict(group_size=2, fusion="rank1"), "triton"),
    (64, dict(group_size=2, fusion="rank1", exact_window=128, window_correction=0.5), "triton"),
    (128, dict(group_size=4, fusion="rank1"), "triton"),
    (64, dict(group_size=2, fusion="rank1", exact_window=128, window_correction=0.5), "sdpa"),
]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"d{c[0]}-{'-'.join(f'{k}{v}' for k, v in c[1].items())}"
                         f"-{c[2]}")
def test_fast_launch_matches_plain_gpu(monkeypatch, case, causal):
    """Memo hits launch what Triton's own path launches: outputs and gradients bit for bit (deterministic
    algorithms, so dQ takes no atomics), on new tensors of the same shapes, with the memo's entries used."""
    from distr_patch.ops import distr_attention
    from distr_patch.ops.distr_attn import _distr_fwd_kernel

    d, kw, backend = case
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    monkeypatch.setattr(L, "_memos", {})
    grad = backend == "triton"

    def run(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        q = torch.randn(2, 6, 1000, d, device="cuda", dtype=torch.bfloat16, generator=g)
        k, v = (torch.randn(2, 2, 1000, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        if backend == "sdpa":
            q, k, v = (t[:, :2].contiguous() for t in (q, k, v))  # the windowed SDPA engine: no GQA needed here
        for t in (q, k, v):
            t.requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = distr_attention(q, k, v, causal=causal, backend=backend, **kw)
        if not grad:
            return [out]
        out.backward(torch.randn(out.shape, device="cuda", dtype=out.dtype, generator=g))
        return [out, q.grad, k.grad, v.grad]

    try:
        monkeypatch.setattr(L, "FAST_LAUNCH", False)
        plain = [run(s) for s in (1, 2)]
        monkeypatch.setattr(L, "FAST_LAUNCH", True)
        fast = [run(s) for s in (3, 1, 2)][1:]  # seed 3 fills the memo; 1 and 2 are hits on new tensors
    finally:
        torch.use_deterministic_algorithms(False)
    for p, f in zip(plain, fast):
        for a, b in zip(p, f):
            assert torch.equal(a, b)
    if backend == "triton":
        entries = list(L._memos[_distr_fwd_kernel].values())
        assert entries and all(e is not None for e in entries), "the forward's launches were not memoised"


@pytest.mark.skipif(CUDA, reason="checks the message given without a CUDA device")
def test_probe_model_switches_needs_cuda():
    script = Path(__file__).resolve().parents[2] / "scripts" / "probe_model_switches.py"
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "needs a CUDA device" in run.stderr


def test_memo_only_on_the_triton_releases_it_ran_on_a_gpu_with():
    """The memo reads Triton internals as 3.6, 3.7 and 3.9 have them (their GPU suites passed with it): other
    releases take the plain path (Triton 3.4's knobs lack add_stages_inspection_hook, which the memo's first check
    read; 3.8 never ran on a GPU here)."""
    code = ("import triton; triton.__version__ = {v!r}; import distr_patch.ops.launch as L; "
            "print(L.TRITON_MINOR, L.FAST_LAUNCH)")
    for version, on in (("3.6.0", True), ("3.6.1", True), ("3.7.1", True), ("3.9.0", True), ("3.4.0", False),
                        ("3.8.0", False), ("3.10.0", False)):
        run = subprocess.run([sys.executable, "-c", code.format(v=version)], capture_output=True, text=True,
                             timeout=300, env={k: v for k, v in os.environ.items() if k != "DISTR_FAST_LAUNCH"})
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == [".".join(version.split(".")[:2]), str(on)], (version, run.stdout)


def test_knobs_without_the_stages_hook_take_the_memo(memo, monkeypatch):
    """A knobs.runtime without add_stages_inspection_hook (Triton 3.4) is read as no hook, not an AttributeError."""
    class Runtime:
        debug = False
        launch_enter_hook = "enter-hook"
        launch_exit_hook = "exit-hook"

    monkeypatch.setattr(_Knobs, "runtime", Runtime)
    fn = _FakeJit(6, ["BLOCK", "FLAG"])
    for _ in range(2):
        L.launch(fn, (3, 2), *_args(), BLOCK=64, FLAG=True, num_warps=4)
    assert len(fn.plain) == 1 and len(fn.compiled.launches) == 1

"""transformers adapter: the "distr" attention implementation, its mask function and ``register()``.

``distr_attention_forward`` has transformers' attention signature
``(module, query [B, Hq, N, d], key/value [B, Hkv, M, d], attention_mask, dropout, scaling, **kwargs)
-> (out [B, N, Hq, d], None)`` and only translates: settings from the module, ``is_causal`` as
``integrations/sdpa_attention.py`` resolves it, valid query rows from the mask. GQA is handled by
the operator (k/v are never repeated). Exact calls (layers kept exact, short queries such as
KV-cache decode steps) go to transformers' own SDPA function.

Per-head settings (``DistrConfig.head_overrides``): ``head_partitions`` groups the query heads by the
operator settings they run with; the operator runs once per group on those query heads and their KV
heads, and the outputs go back in head order. Heads with G=1 (or below their ``exact_below``) run the
operator with G=1, exact attention.

Masks: "distr" is registered in ``AttentionMaskInterface`` with transformers' ``sdpa_mask`` (boolean,
True = attend, None for plain causal prefill), so padding and sliding windows reach the operator.
The operator places the exact window bottom-right (query i at key i + M - N); a static cache's keys end in
unwritten (masked) slots, so a masked call with a window first drops the key tail that no row attends
(``attended_length``, one host read per forward); under torch.compile or a CUDA graph capture, where no host read
is possible, it rotates the key axis instead so that the tail comes first (``rotate_to_attended_end``: a copy of K,
V and the mask).
Answers that depend on the mask alone (the valid query rows, the attended length) are computed once per mask
tensor in eager mode (``per_mask``): a model's layers share one mask per forward.
"""
from __future__ import annotations

import copy
import warnings
import weakref

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from ..compat import check_transformers
from ..config import DistrConfig, LayerSettings
from ..ops import distr_attention
from ..ops.configs import sdpa_runs
from ..ops.reference import normalize_mask

logger = logging.get_logger(__name__)

ATTN_IMPLEMENTATION = "distr"  # free of "flash"/"sdpa", which transformers special-cases
_UNSUPPORTED_KWARGS = ("softcap", "position_bias", "s_aux", "sinks")


class DistrSettingsError(ValueError):
    """The attention module carries no resolvable DistrAttention settings."""


def layer_settings(module: torch.nn.Module) -> LayerSettings:
    """The settings ``module`` runs with: attached by ``patch_model``, else from ``module.config.distr_config``.

    A model loaded with ``attn_implementation="distr"`` resolves them here from the config dict (or the
    defaults), with the module's ``layer_idx`` for per-layer configs, again whenever the dict changes.
    """
    settings = getattr(module, "_distr_settings", None)
    if settings is not None:
        return settings
    config = getattr(module, "config", None)
    raw = getattr(config, "distr_config", None)
    if isinstance(raw, DistrConfig):  # assigned without .to_dict(): store the dict, which save_pretrained can write
        raw = raw.to_dict()
        if not torch.compiler.is_compiling():
            config.distr_config = raw
    cached = getattr(module, "_distr_settings_auto", None)
    if cached is not None and cached[0] == raw:  # a snapshot: an edit of the dict in place counts too
        return cached[1]
    # local: the registry imports this module
    from ..patching.registry import attention_modules, get_replacement, patched_through

    entry = get_replacement(getattr(config, "model_type", None))  # unsupported types raise, listing the supported
    owner = None if torch.compiler.is_compiling() else patched_through(config)
    if owner is not None and not any(m is module for m in owner.modules()):
        warnings.warn(f"a {type(module).__name__} that patch_model did not patch runs DistrAttention: its model shares "
                      f"its config object with a patched {type(owner).__name__}, and transformers keeps the attention "
                      "implementation on the config. Build each model from its own config (copy.deepcopy(config)) "
                      "to keep this one exact.", stacklevel=2)
    cfg = DistrConfig() if raw is None else DistrConfig.from_dict(raw)
    layer_idx = getattr(module, "layer_idx", None)
    if layer_idx is None and not cfg.is_layer_uniform():
        raise DistrSettingsError(
            f"{type(module).__name__} has no layer index, so the per-layer settings of config.distr_config "
            "cannot be resolved here; call distr_patch.patch_model(model) after loading to attach them")
    if entry.find_attention is not attention_modules and not cfg.is_layer_uniform():
        raise DistrSettingsError(
            f"per-layer settings of a {entry.model_type} model count the attention modules its registry entry finds, "
            f"which its layer indices (here {layer_idx}) need not number; call distr_patch.patch_model(model) after "
            "loading to attach them")
    num_layers = getattr(config, "num_hidden_layers", None)
    settings = cfg.for_layer(layer_idx, num_layers) if layer_idx is not None else cfg.for_layer(None)
    if not torch.compiler.is_compiling():  # (Dynamo before torch 2.9 cannot trace deepcopy: resolved per trace there)
        module._distr_settings_auto = (copy.deepcopy(raw), settings)
    return settings


def query_rows_valid(attention_mask: torch.Tensor, batch: int, q_len: int, kv_len: int,
                     causal: bool = True) -> torch.Tensor:
    """Bool [B, N]: True for real query rows, False for padding, from a mask broadcastable to [B, H, N, M].

    Row i sits at key position i + E - N, where E is the keys' attended end (``_attended_end``: M less a static
    cache's unwritten tail, which no row attends; M where the mask broadcasts its rows or keys); it is padding if
    that key is masked for it: padding masks drop a padding token's key column for every row, while causal,
    sliding-window and bidirectional patterns always keep a token's own key. A batch element where no row passes
    (a mask not aligned that way) falls back to "the row attends to some key". Device ops only (traceable).
    """
    allowed, _ = normalize_mask(attention_mask)
    allowed = allowed.any(dim=1).expand(batch, q_len, kv_len)  # [B, N, M]
    rows = torch.arange(q_len, device=allowed.device)
    end = _attended_end(attention_mask, q_len, kv_len, causal)
    end = kv_len if end is None else end.to(allowed.device)
    diag = (rows + (end - q_len)).clamp(0, kv_len - 1)
    own = allowed[:, rows, diag]
    # own | (no own row valid & attends to some key), with no torch.where on a reduction: Inductor hands `any`'s
    # int8 result to tl.where as its condition, which Triton deprecates (docs/benchmarks.md, twenty-fifth session)
    return own | (~own.any(dim=-1, keepdim=True) & allowed.any(dim=-1))


def _attended_end(attention_mask: torch.Tensor, q_len: int, kv_len: int, causal: bool = True) -> torch.Tensor | None:
    """Scalar long tensor on the mask's device: E, the keys a call needs, ``kv_len`` less a tail that no row attends
    (a static cache's unwritten slots), between q_len and kv_len: the N query rows are keys E - N .. E - 1. None when
    that is kv_len without a read: no more keys than queries, or a mask that broadcasts its rows or keys (no position
    to read). Device ops only (traceable); [N, M] temporaries.

    The mask alone cannot always tell unwritten slots from padding at the end of every sequence (both are key columns
    no row attends), so the call's causality decides:
    - causal: E - N is the furthest any row reaches past its own row index (each real row's last key is its own, so
      a batch whose sequences all end in padding keeps its keys in place), unless that puts real rows where they do
      not see their own keys: rows that attend past their own (a prefix-LM mask) then take E = max(N, 1 + the last
      key any row attends);
    - not causal (every row may see every written key): E = max(N, 1 + the last key any row attends).
    """
    if kv_len <= q_len:
        return None
    allowed, _ = normalize_mask(attention_mask)
    allowed = allowed.any(dim=1).any(dim=0)  # [N or 1, M or 1]
    if allowed.shape != (q_len, kv_len):
        return None
    cols = torch.arange(1, kv_len + 1, device=allowed.device, dtype=torch.int32)
    last = (allowed * cols).amax(dim=-1) - 1  # [N], -1 where a row sees no key (no tl.where on `any`, below)
    rows = torch.arange(q_len, device=allowed.device)
    last_any = last.amax()  # the last key any row attends
    lowest = (last_any + 1 - q_len).clamp(min=0)  # E - N is at least this: nothing is attended from E on
    if causal:
        furthest = torch.where(last >= 0, last - rows, -1).amax()  # row 0's own key, read off the furthest row
        # a row that does not see its own key (i + offset) is padding, and a padding key is masked for every row
        own = rows + furthest
        inside = own < kv_len
        own = own.clamp(max=kv_len - 1)
        sees_own = allowed[rows, own] & inside
        consistent = ~(~sees_own & inside & allowed.any(dim=0)[own]).any()
        offset = torch.where(consistent, furthest, lowest)
    else:
        offset = lowest
    return torch.where(last_any < 0, kv_len, (offset + q_len).clamp(q_len, kv_len))


_per_mask: dict[str, tuple] = {}  # what -> (weakref to a mask, (its _version, *arguments), the answer)


def per_mask(what: str, attention_mask: torch.Tensor, arguments: tuple, compute):
    """``compute()``, once per mask tensor: a model's layers share one mask per forward, so the last answer for
    ``what`` is kept for that tensor and those ``arguments``. Computed again for another tensor, after an in-place
    write (the version counter counts it), and at every call for a tensor made under ``torch.inference_mode`` (it
    has no version counter, so a write could not be seen). Eager only: under tracing call ``compute`` itself."""
    if attention_mask.is_inference():
        return compute()
    key = (attention_mask._version, *arguments)
    last = _per_mask.get(what)
    if last is not None and last[0]() is attention_mask and last[1] == key:
        return last[2]
    answer = compute()
    _per_mask[what] = (weakref.ref(attention_mask), key, answer)
    return answer


def attended_length(attention_mask: torch.Tensor, q_len: int, kv_len: int, causal: bool = True) -> int:
    """The keys a call needs (``_attended_end``) as an int: the operator places the exact window bottom-right
    (row i at key i + M - N), so an unattended tail would move the band off the diagonal. Host sync, once per mask
    (``per_mask``)."""
    def read() -> int:
        end = _attended_end(attention_mask, q_len, kv_len, causal)
        return kv_len if end is None else int(end)
    return per_mask("attended length", attention_mask, (q_len, kv_len, causal), read)


def rotate_to_attended_end(key, value, attention_mask, q_len: int, causal: bool = True):
    """key/value [B, Hkv, M, d] and the mask [..., M] with the key axis rotated so that the attended keys end at M
    (``_attended_end``): the unattended tail comes first, where every row masks it. The same function as cutting the
    tail off, with the band in place, for torch.compile and CUDA graph capture (no host read, static shapes)."""
    kv_len = key.shape[2]
    end = _attended_end(attention_mask, q_len, kv_len, causal)
    if end is None:
        return key, value, attention_mask
    idx = (torch.arange(kv_len, device=key.device) + end.to(key.device)) % kv_len  # new slot p: old key (p + end) % M
    mask_idx = idx.to(attention_mask.device)
    return key.index_select(2, idx), value.index_select(2, idx), attention_mask.index_select(-1, mask_idx)


def _tracing(t: torch.Tensor) -> bool:
    """True under torch.compile or a CUDA graph capture, where a host read of a tensor is no option."""
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


def autocast_inputs(query, key, value):
    """Under autocast (the Trainer's ``bf16``/``fp16``) transformers hands over mixed dtypes (RoPE returns q/k
    in fp32, v stays in the autocast dtype). SDPA is an autocast op that casts all three to the autocast
    dtype; do the same so that the operator's one-dtype check holds."""
    device_type = query.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return query.to(dtype), key.to(dtype), value.to(dtype)
    return query, key, value


def head_partitions(settings: LayerSettings, num_heads: int, q_len: int) -> list[tuple[list[int], dict]] | None:
    """The query heads of one call grouped by the operator settings they run with: [(heads, operator kwargs)],
    heads ascending, groups ordered by their first head; one group of all heads when the layer has no
    per-head settings. Heads with G=1, or with fewer than ``exact_below`` query rows, share one exact
    group (G=1, no window). None when every head is below its ``exact_below`` (the call runs exact SDPA).
    """
    if not settings.heads:
        return None if q_len < settings.exact_below else [(list(range(num_heads)), settings.operator_kwargs())]
    bad = [h for h in settings.heads if not 0 <= h < num_heads]
    if bad:
        raise DistrSettingsError(f"per-head settings for query head {bad[0]}, but this layer has {num_heads} heads")
    per_head = [settings.for_head(h) for h in range(num_heads)]
    if all(q_len < s.exact_below for s in per_head):
        return None
    exact = {**settings.operator_kwargs(), "group_size": 1, "exact_window": 0, "window_correction": 0.0}
    groups: dict[tuple, tuple[list[int], dict]] = {}
    for h, s in enumerate(per_head):
        kw = exact if s.group_size == 1 or q_len < s.exact_below else s.operator_kwargs()
        groups.setdefault(tuple(sorted(kw.items())), ([], kw))[0].append(h)
    return list(groups.values())


def _heads_of(query, key, value, attention_mask, heads: list[int]):
    """q/k/v (and a per-head mask) of the query heads ``heads``: whole GQA groups keep their KV heads
    (no copy of K/V per query head), otherwise each query head gets its own KV head."""
    hq, hkv = query.shape[1], key.shape[1]
    rep = hq // hkv
    idx = torch.tensor(heads, device=query.device)
    kv = sorted({h // rep for h in heads})
    if heads == [g * rep + r for g in kv for r in range(rep)]:
        kv_idx = torch.tensor(kv, device=query.device)
    else:
        kv_idx = idx // rep
    head_dim = None if attention_mask is None else attention_mask.dim() - 3  # [..., H, N, M]: broadcast from the left
    if head_dim is not None and head_dim >= 0 and attention_mask.shape[head_dim] == hq > 1:
        attention_mask = attention_mask.index_select(head_dim, idx)
    return query.index_select(1, idx), key.index_select(1, kv_idx), value.index_select(1, kv_idx), attention_mask


def distr_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                            is_causal=None, **kwargs):
    """transformers attention function: query [B, Hq, N, d], key/value [B, Hkv, M, d] -> ([B, N, Hq, d], None)."""
    for name in _UNSUPPORTED_KWARGS:  # first: the exact path below (SDPA) would drop them without a word
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"distr attention does not support `{name}`; keep this model on "
                                      "attn_implementation='sdpa' or 'eager'")
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-1] > key.shape[2]:
        # legacy mask code (StableLM on transformers 5.0) builds one key column more than the keys: the eager
        # attention of those models cuts it to the keys, as here
        attention_mask = attention_mask[..., :key.shape[2]]
    settings = layer_settings(module)
    q_len = query.shape[2]
    parts = None if settings.exact else head_partitions(settings, query.shape[1], q_len)
    if parts is None:
        sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
        return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
                    **kwargs)
    if kwargs.get("output_attentions", False):
        logger.warning_once("distr attention does not return attention weights (output_attentions=True)")
    if dropout > 0.0:
        logger.warning_once(f"distr attention ignores attention dropout (p={dropout}) in training mode")
    # As sdpa_attention.py: the kwarg wins over the module; a mask (or a single query row) means no is_causal.
    module_causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    is_causal = bool(q_len > 1 and attention_mask is None and module_causal)
    if is_causal and key.shape[2] > q_len:  # prefill into an empty static cache: the tail is unwritten
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    elif (attention_mask is not None and key.shape[2] > q_len and attention_mask.shape[-1] > 1
          and any(kw["exact_window"] > 0 for _, kw in parts)):  # a static cache's tail: keep the band in place
        if _tracing(query):
            key, value, attention_mask = rotate_to_attended_end(key, value, attention_mask, q_len, module_causal)
        else:
            m = attended_length(attention_mask, q_len, key.shape[2], module_causal)
            if m < key.shape[2]:
                key, value, attention_mask = key[:, :, :m], value[:, :, :m], attention_mask[..., :m]
    query, key, value = autocast_inputs(query, key, value)
    query_valid = None
    if attention_mask is not None:  # eager: once per forward (every layer gets the same mask), traced: every call
        shape = (query.shape[0], q_len, key.shape[2])
        rows_valid = lambda: query_rows_valid(attention_mask, *shape, module_causal)  # noqa: E731
        query_valid = rows_valid() if _tracing(query) else per_mask("query rows valid", attention_mask,
                                                                    (*shape, module_causal, query.device), rows_valid)
    common = dict(causal=is_causal, scale=scaling, query_valid=query_valid)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))

    def engine(kw) -> str:  # DistrConfig.engine "sdpa": the calls the SDPA engine runs whole, the rest "auto"
        runs = settings.engine == "sdpa" and sdpa_runs(kw["group_size"], kw["exact_window"], attention_mask,
                                                       is_causal, q_len, key.shape[2], needs_grad)
        return "sdpa" if runs else "auto"

    if len(parts) == 1:
        kw = parts[0][1]
        out = distr_attention(query, key, value, attention_mask=attention_mask, backend=engine(kw), **common, **kw)
    else:
        outs = []
        for heads, kw in parts:
            q, k, v, mask = _heads_of(query, key, value, attention_mask, heads)
            outs.append(distr_attention(q, k, v, attention_mask=mask, backend=engine(kw), **common, **kw))
        order = [h for heads, _ in parts for h in heads]
        inverse = torch.argsort(torch.tensor(order, device=query.device))
        out = torch.cat(outs, dim=1).index_select(1, inverse)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register "distr" in transformers' attention and mask registries (idempotent)."""
    check_transformers()
    AttentionInterface.register(ATTN_IMPLEMENTATION, distr_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)

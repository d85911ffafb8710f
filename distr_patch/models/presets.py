"""Architecture presets: real-size configs with random weights, for latency only (no hub access).

The shapes copy the public configs of the named checkpoints; only the time they take matters,
so the weights are random. ``preset:<name>`` in ``--model`` builds one of these.
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
    ),
    # Qwen/Qwen2-1.5B
    "qwen2-1.5b": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
    # HuggingFaceTB/SmolLM2-135M (the embedded default's shapes)
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    ),
    # google/vit-base-patch16-224 (facebook/deit-base-patch16-224 is the same architecture: model_type vit)
    "vit-b16": dict(
        model_type="vit", hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=16, num_labels=1000,
    ),
    # facebook/deit-base-distilled-patch16-224 (class + distillation tokens: 198 tokens)
    "deit-b": dict(
        model_type="deit", hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=16, num_labels=1000,
        # the auto class maps deit to two heads; transformers 5.17 then needs the architecture named
        architectures=["DeiTForImageClassificationWithTeacher"],
    ),
}

# Presets a tiny test needs only differ in size; the model class follows the model_type.
VISION_TYPES = {"vit", "deit", "dinov2"}


def preset_config(name: str, **overrides):
    """A transformers config for preset ``name`` (``overrides`` replace fields, e.g. num_hidden_layers=2)."""
    from transformers import AutoConfig

    if name not in PRESETS:
        import difflib

        near = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"--model preset:{name}: unknown preset{hint}; known: {', '.join(sorted(PRESETS))}")
    fields = {**PRESETS[name], **overrides}
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)

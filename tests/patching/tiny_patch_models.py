"""Tiny models built from configs (no hub access), one per supported model type, and input helpers.

Weights use initializer_range 0.2 (transformers' default 0.02 makes attention nearly uniform, so a
G=2 grouping would change the outputs by little more than rounding and tests could not tell).
"""
from __future__ import annotations

import torch
import transformers as tf

VOCAB = 128
IMAGE = 56  # with patch 4: 14x14 patches + CLS = 197 tokens, the real ViT-B/16 sequence length
DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, initializer_range=0.2)
VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=IMAGE,
              patch_size=4, initializer_range=0.2)

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**DECODER),                       # GQA: 4 query heads, 2 KV heads, d=16
    "mistral": lambda: tf.MistralConfig(**DECODER, sliding_window=24),  # sequences longer than the window
    "qwen2": lambda: tf.Qwen2Config(**DECODER),
    "qwen3": lambda: tf.Qwen3Config(**DECODER, head_dim=16),
    "phi3": lambda: tf.Phi3Config(**DECODER, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "gemma": lambda: tf.GemmaConfig(**DECODER, head_dim=16),
    "vit": lambda: tf.ViTConfig(**VISION),
    "deit": lambda: tf.DeiTConfig(**VISION),
    "dinov2": lambda: tf.Dinov2Config(**{k: v for k, v in VISION.items() if k != "intermediate_size"}, mlp_ratio=2),
}
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma")
VISION_TYPES = ("vit", "deit", "dinov2")
_VISION_CLASSES = {"vit": tf.ViTForImageClassification, "deit": tf.DeiTForImageClassificationWithTeacher,
                   "dinov2": tf.Dinov2ForImageClassification}


def build(model_type: str, seed: int = 0, config_overrides: dict | None = None, **kwargs):
    """A tiny eval-mode model of ``model_type`` (config_overrides: config fields to change, e.g. sliding_window;
    kwargs go to from_config, e.g. attn_implementation)."""
    torch.manual_seed(seed)
    config = CONFIGS[model_type]()
    if config_overrides:  # through the constructor, so that fields derived from these follow them
        config = type(config).from_dict({**config.to_dict(), **config_overrides})
    if model_type in VISION_TYPES:
        model = _VISION_CLASSES[model_type]._from_config(config, **kwargs)
    else:
        model = tf.AutoModelForCausalLM.from_config(config, **kwargs)
    return model.eval()


def inputs(model_type: str, batch: int = 2, seq: int = 40, seed: int = 1) -> dict:
    """Model inputs: token ids [batch, seq] for decoders, pixel values [batch, 3, 56, 56] for vision models."""
    g = torch.Generator().manual_seed(seed)
    if model_type in VISION_TYPES:
        return {"pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=g)}
    return {"input_ids": torch.randint(1, VOCAB, (batch, seq), generator=g)}


def logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits

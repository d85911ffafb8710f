"""Tiny models and tokenizers built offline from configs, for the harness and CLI tests."""
from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = ("the a one two red blue cat dog sat ran on under big small house tree river hill bird fish "
         "sees eats likes finds and but then today later near far fast slow green old new").split()


def sample_text(num_words: int = 600, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines, line = [], []
    for _ in range(num_words):
        line.append(rng.choice(WORDS))
        if len(line) == 12:
            lines.append(" ".join(line) + " .")
            line = []
    return "\n".join(lines)


def word_tokenizer():
    """A WordLevel tokenizer over WORDS (+ '.'), with bos prepended like Llama's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate([*specials, *WORDS, "."])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


def tiny_llama(vocab_size: int, seed: int = 0, head_dim: int = 16):
    """4 query heads, 2 KV heads of ``head_dim`` (16; the Triton kernel needs 32, 64, ...: GPU tests pass 64)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=4 * head_dim, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=512,
                      bos_token_id=2, eos_token_id=3, pad_token_id=1)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights: sharper attention, so G=2 visibly differs from exact
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(8.0)
    return model


def save_tiny_lm(directory: Path, head_dim: int = 16) -> Path:
    tok = word_tokenizer()
    model = tiny_llama(len(tok), head_dim=head_dim)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def tiny_vit(num_labels: int = 5, seed: int = 0, image_size: int = 32):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    image_size=image_size, patch_size=4, num_labels=num_labels)
    return ViTForImageClassification(cfg).eval()


def save_tiny_vit(directory: Path, num_labels: int = 5) -> Path:
    from transformers import ViTImageProcessor

    tiny_vit(num_labels).save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def write_image_folder(directory: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """An ``imagefolder`` layout: directory/<class>/<i>.png with random colour images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (directory / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(directory / f"class{c}" / f"{i}.png")
    return directory


def write_lm_eval_task(directory: Path, rows: int) -> Path:
    """An lm-eval task ``mytask`` in ``directory``: ``rows`` 4-choice questions over local JSON lines
    (``dataset_path: json``, offline). Pass ``directory`` as ``--lm-eval-include``."""
    import json

    d = Path(directory)
    # contexts of 24 words: past the default exact_below (16 query rows), so G>1 runs the DistrAttention operator
    lines = sample_text(num_words=24 * rows).split("\n")
    contexts = [" ".join(lines[2 * i:2 * i + 2]) for i in range(rows)]
    choices = ["the cat sat on the hill .", "red fish .", "blue tree near the river .", "eats ."]
    data = [{"question": c, "choices": choices, "answer": i % 4} for i, c in enumerate(contexts)]
    (d / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in data) + "\n")
    (d / "mytask.yaml").write_text(f"""\
task: mytask
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d / 'rows.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return d

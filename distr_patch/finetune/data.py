"""Training and held-out data, from the harness's loaders.

- ``lm``: the text of ``--data`` (``load_text``) tokenised once; the first ``train_tokens`` tokens are cut
  into non-overlapping ``seq_len`` blocks (labels = inputs; the model shifts them), and the
  ``heldout_tokens`` right after them are the held-out part that the harness's strided perplexity scores.
  Training never sees a held-out token.
- ``vit``: the images of ``--data`` (``load_images``: an imagefolder directory or a data set); the last
  ``heldout_fraction`` of them is held out. Pixels come from the model's image processor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import load_images, load_text
from ..data.errors import DataError
from ..eval.lm import CHARS_PER_TOKEN_BOUND

DEFAULT_TEXT = "lee"


@dataclass
class TextSplit:
    train: torch.Tensor  # [num_blocks, seq_len] token ids
    heldout: torch.Tensor  # [heldout_tokens] token ids, right after the training tokens
    train_tokens: int  # tokens in the training blocks
    heldout_begin: int  # index of the first held-out token in the tokenised text


class BlockDataset(torch.utils.data.Dataset):
    """Rows of a [num_rows, ...] tensor as ``{"input_ids", "labels"}`` (causal LM) for the Trainer."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def split_token_ids(ids: torch.Tensor, *, seq_len: int, heldout_tokens: int,
                    train_tokens: int | None = None) -> TextSplit:
    """Training blocks from the start of ``ids`` and the held-out tokens after them."""
    total = ids.numel()
    if train_tokens is None:
        train_tokens = total - heldout_tokens
    num_blocks = train_tokens // seq_len
    if num_blocks < 1 or num_blocks * seq_len + heldout_tokens > total:
        raise DataError(f"--data: the text has {total} tokens; {max(train_tokens, seq_len)} training tokens "
                        f"(at least one --seq-len {seq_len} block) and --heldout-tokens {heldout_tokens} do not fit")
    used = num_blocks * seq_len
    begin = train_tokens if train_tokens + heldout_tokens <= total else used
    return TextSplit(ids[:used].reshape(num_blocks, seq_len).clone(), ids[begin:begin + heldout_tokens].clone(),
                     used, begin)


def text_split(data: str | None, tokenizer, *, seq_len: int, heldout_tokens: int, train_tokens: int | None = None,
               column: str = "text", split: str = "train", name: str | None = None) -> TextSplit:
    """Tokenise ``data`` (read only as far as needed) and split it into training blocks and held-out tokens."""
    max_chars = None if train_tokens is None else CHARS_PER_TOKEN_BOUND * (train_tokens + heldout_tokens)
    text, _ = load_text(data or DEFAULT_TEXT, column=column, split=split, name=name, max_chars=max_chars)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    return split_token_ids(ids, seq_len=seq_len, heldout_tokens=heldout_tokens, train_tokens=train_tokens)


class ImageDataset(torch.utils.data.Dataset):
    """``{"pixel_values", "labels"}`` rows, pixels from ``processor`` (done once, up front)."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i]}


def image_split(data: str, processor, *, heldout_fraction: float, image_column: str = "image",
                label_column: str = "label", split: str = "train", name: str | None = None,
                limit: int | None = None, model=None) -> tuple[ImageDataset, ImageDataset]:
    """(train, held-out) image datasets; the held-out part is the last ``heldout_fraction`` of the rows. With
    ``model``, labels are its class indices, matched as ``eval vit`` matches them (``eval.vision.label_mapping``)."""
    from ..eval.vision import label_mapping, model_labels

    ds = load_images(data, split=split, name=name, image_column=image_column, label_column=label_column, limit=limit)
    n_held = max(1, round(len(ds) * heldout_fraction))
    if len(ds) - n_held < 1:
        raise DataError(f"--data {data}: {len(ds)} images leave none to train on with --heldout-fraction "
                        f"{heldout_fraction}")
    images = [im.convert("RGB") for im in ds[image_column]]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    mapping = label_mapping(ds, label_column, model)[0] if model is not None else None
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    labels = torch.tensor(model_labels(ds[label_column], mapping, label_column, num_labels), dtype=torch.long)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))  # imagefolder rows come by class
    pixels, labels = pixels[order], labels[order]
    cut = len(ds) - n_held
    return ImageDataset(pixels[:cut], labels[:cut]), ImageDataset(pixels[cut:], labels[cut:])

"""``eval vit``: image classification top-1/top-5, or embedding fidelity, exact vs DistrAttention per G.

- ``top-k`` (an image classifier): top-1 and top-5 accuracy with the model's own image processor. Data
  set labels are mapped to the model's classes by name when every class name is one of the model's
  labels, by index when none is (a partial match, more classes than the model, or an unlabelled image is
  an error: each would score against the wrong classes).
- ``fidelity`` (any ViT-family backbone, e.g. DINOv2): cosine similarity between each image's pooled
  embedding under the variant and under exact attention, averaged (exact = 1).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..data import load_images
from ..data.errors import DataError
from ..models import load_model
from .config import ConfigError, RunConfig
from .distributed import Shard
from .metrics import accuracy, top_k_accuracy
from .provenance import provenance
from .results import ResultFile, model_info
from .runner import CPU_NOTE, RunOutput, finish, pick_device, run_directory, run_variants
from .timing import Timer, quantiles
from .variants import Variant, build_variants

TOP_K = 5


def label_mapping(dataset, label_column: str, model) -> tuple[list[int] | None, str]:
    """Data set label index -> model class index (None: identity), and how it was decided. Raises DataError where
    either way would score against the wrong classes: some class names are the model's labels and some are not, or
    the data has more classes than the model."""
    feature = dataset.features[label_column]
    names = list(getattr(feature, "names", None) or [])
    label2id = {str(k).lower(): v for k, v in (getattr(model.config, "label2id", None) or {}).items()}
    unknown = [n for n in names if n.lower() not in label2id]
    if names and not unknown:
        return [label2id[n.lower()] for n in names], "by class name"
    if names and len(unknown) < len(names):
        raise DataError(f"--label-column {label_column}: {len(names) - len(unknown)} of the data's {len(names)} class "
                        f"names are labels of the model and {len(unknown)} are not (e.g. {unknown[0]!r}): name every "
                        f"class as in the model's config.id2label to match by name, or none, to match by index")
    num_labels = getattr(model.config, "num_labels", None)
    if names and num_labels is not None and len(names) > num_labels:
        raise DataError(f"--label-column {label_column}: the data has {len(names)} classes, the model {num_labels}; "
                        f"its class names are not the model's labels, so they cannot be matched")
    return None, "label index = model class index"


def model_labels(labels: list[int], mapping: list[int] | None, label_column: str, num_labels: int | None) -> list[int]:
    """The model's class index of each data set label; a DataError for an image without a label (-1: top-k needs
    one) or an index the model does not have."""
    missing = sum(y < 0 for y in labels)
    if missing:
        raise DataError(f"--label-column {label_column}: {missing} of the {len(labels)} images have no label (-1); "
                        f"top-1/top-5 need labelled images (a labelled --split, or --vit-metric fidelity)")
    out = [mapping[y] for y in labels] if mapping else list(labels)
    if num_labels is not None and out and max(out) >= num_labels:
        raise DataError(f"--label-column {label_column}: label {max(out)} is past the model's {num_labels} classes")
    return out


def pooled(outputs) -> torch.Tensor:
    """The image embedding: ``pooler_output`` when the model has one, else the first (CLS) token. (A pooler whose
    weights the checkpoint lacks is removed at load: ``models.loading._drop_untrained_pooler``.)"""
    p = getattr(outputs, "pooler_output", None)
    return p if p is not None else outputs.last_hidden_state[:, 0]


def fidelity(embeddings: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean over images of the cosine similarity between each embedding [n, D] and its exact one (exact: 1)."""
    return F.cosine_similarity(embeddings.float(), exact.float(), dim=-1).mean().item()


def run_vit(cfg: RunConfig, *, progress: bool = True) -> RunOutput:
    from tqdm.auto import tqdm

    if not cfg.model:
        raise ConfigError("--model: required (a local directory or a hub id of an image classifier or backbone)")
    if not cfg.data:
        raise ConfigError("--data: required (an imagefolder directory or a datasets name with image/label columns)")
    by_fidelity = cfg.vit_metric == "fidelity"  # (compares embeddings: no labels needed)
    label_column = cfg.label_column or (None if by_fidelity else "label")
    cfg = dataclasses.replace(cfg, label_column=label_column)
    torch.manual_seed(cfg.seed)
    shard = Shard.current(cfg.device)
    device = pick_device(cfg)
    variants = build_variants(cfg.group_sizes, cfg.settings, cfg.distr, cfg.distr_configs)
    ds = load_images(cfg.data, split=cfg.split, name=cfg.data_name, image_column=cfg.image_column,
                     label_column=label_column, limit=cfg.limit)  # data errors before the slow model load
    loaded = load_model(cfg.model, "backbone" if by_fidelity else "vit", dtype=cfg.dtype, device_map=cfg.device_map)
    model, processor = loaded.model, loaded.processor
    if not cfg.device_map:
        model.to(device)
    mapping, mapping_note = (None, "") if by_fidelity else label_mapping(ds, label_column, model)
    labels = [] if by_fidelity else model_labels(ds[label_column], mapping, label_column,
                                                 getattr(model.config, "num_labels", None))
    batches = [range(i, min(i + cfg.batch_size, len(ds))) for i in range(0, len(ds), cfg.batch_size)]

    directory = run_directory(cfg, "eval-vit")
    notes = ([CPU_NOTE] if device.type == "cpu" else []) + ([f"labels: {mapping_note}"] if mapping_note else [])
    result = ResultFile(directory / "result.json", kind="eval-vit",
                        model=model_info(model, cfg.model, loaded.source, cfg.dtype), config=cfg.to_dict(),
                        provenance=provenance(device, seed=cfg.seed, num_processes=shard.world), notes=notes,
                        write=shard.is_main)
    result.add_dataset("images", cfg.data, len(ds), unit="images", split=cfg.split)
    exact_embeddings: list[torch.Tensor] = []

    @torch.no_grad()
    def evaluate(variant: Variant) -> tuple[dict, dict]:
        timer, mine = Timer(model), []
        for b in tqdm(shard.indices(len(batches)), desc=variant.name, disable=not (progress and shard.is_main),
                      leave=False):
            images = [im.convert("RGB") for im in ds.select(batches[b])[cfg.image_column]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
            out = timer(lambda: model(pixel_values=pixels))
            mine.append((b, pooled(out).float().cpu() if by_fidelity else
                         out.logits.float().topk(min(TOP_K, out.logits.shape[-1]), -1).indices.cpu()))
        per_batch = shard.gather(mine)
        samples = shard.gather_all(timer.samples)
        latency = {"images": {**quantiles(samples), "unit": f"forward of a batch of {cfg.batch_size} images"
                                                            f"{shard.at_once}"}} if samples else {}
        if by_fidelity:
            emb = torch.cat(per_batch)
            if variant.is_exact:
                exact_embeddings[:] = [emb]
            return {"cosine": (fidelity(emb, exact_embeddings[0]), "images")}, latency
        ranked = torch.cat(per_batch).tolist()
        return {"top1": (accuracy([r[0] for r in ranked], labels), "images"),
                "top5": (top_k_accuracy(ranked, labels, k=TOP_K), "images")}, latency

    finished = run_variants(model, variants, evaluate, result, shard=shard, progress=progress)
    finish(result, directory, plots=cfg.plots, interrupted=not finished, shard=shard)
    return RunOutput(result, directory, not finished)

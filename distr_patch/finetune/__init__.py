"""Short recovery fine-tuning of a DistrAttention-patched model with the HF Trainer (issue 7, the recipe).

``run_finetune(FinetuneConfig(...))`` (``distr-patch finetune``) scores exact attention and each
DistrAttention variant on held-out data, fine-tunes each the same way, scores again and saves each model
so that ``from_pretrained(path, attn_implementation="distr")`` reloads its DistrAttention settings.
"""
from .config import FinetuneConfig
from .run import FinetuneOutput, run_finetune
from .train import finetune, load_checkpoint, save_checkpoint

__all__ = ["FinetuneConfig", "FinetuneOutput", "finetune", "load_checkpoint", "run_finetune", "save_checkpoint"]

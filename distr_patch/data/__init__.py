"""Data sets for the harness: text for perplexity (local text files and corpora also without ``datasets``),
multiple-choice rows, images."""
from .choices import ChoiceRow, load_choices
from .corpora import CORPUS_ALIASES, locate_corpus
from .images import load_images
from .text import load_text

__all__ = ["CORPUS_ALIASES", "ChoiceRow", "load_choices", "load_images", "load_text", "locate_corpus"]

"""Model loading for the harness: aliases, local paths, GGUF files, hub ids and random-weight presets."""
from .loading import MODEL_ALIASES, LoadedModel, ModelLoadError, load_model
from .presets import PRESETS, preset_config

__all__ = ["MODEL_ALIASES", "PRESETS", "LoadedModel", "ModelLoadError", "load_model", "preset_config"]

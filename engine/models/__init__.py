"""The model registry with the built-in sample models registered."""
from engine.models import builtin  # noqa: F401  (registers digits-mlp, digits-cnn, minilm)
from engine.models.registry import ModelSpec, base_model, create_model, get_spec, model_names, register_model

__all__ = ["ModelSpec", "base_model", "create_model", "get_spec", "model_names", "register_model"]

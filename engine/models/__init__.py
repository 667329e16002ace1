"""The model registry with the built-in sample models and the user-model sources (hf:, py:) registered;
the tasks a user model can do are in engine.models.tasks (registered in engine.core.axes.TASKS)."""
from engine.models import builtin, user  # noqa: F401  (register digits-mlp, digits-cnn, minilm; the hf:/py: sources)
from engine.models.registry import ModelSpec, base_model, create_model, get_spec, model_names, register_model

__all__ = ["ModelSpec", "base_model", "create_model", "get_spec", "model_names", "register_model"]

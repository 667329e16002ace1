"""Errors a user can cause and fix (the CLI prints one line, exit 2) and verification failures (exit 1)."""


class UserError(ValueError):
    """Bad input (a recipe value, a model name, a path, a setting): the message says what is allowed."""


class RecipeError(UserError):
    """A recipe field holds a value that is not allowed, or a combination that cannot run."""


class UnknownModelError(UserError):
    """No model is registered under that name."""


NO_CUDA = "device=cuda cannot run here: no CUDA GPU is visible to PyTorch; use device cpu"


class VerificationError(Exception):
    """A bundle does not match what it records (a file was changed, replaced or is missing): exit 1."""

"""Errors a user can cause and fix: the CLI prints them as one line and exits 2."""


class UserError(ValueError):
    """Bad input (a recipe value, a model name, a file): the message says what is allowed."""


class RecipeError(UserError):
    """A recipe field holds a value that is not allowed, or a combination that cannot run."""


class UnknownModelError(UserError):
    """No model is registered under that name."""

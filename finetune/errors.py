"""Errors a user can cause. The CLI catches `FinetuneError` once and prints one line, exit 2."""

from __future__ import annotations


class FinetuneError(Exception):
    """Base class: a user-facing error whose message is one line naming file, key or line."""


class RecipeError(FinetuneError):
    """The recipe YAML is unreadable, has an unknown key, or a value of the wrong type or range."""


class DataError(FinetuneError):
    """A dataset file is missing, empty, or has a malformed row."""


class ModelError(FinetuneError):
    """A base model cannot be resolved or loaded (not found, offline, needs remote code)."""


class RunError(FinetuneError):
    """A run folder is in a state that forbids the action (exists without --force, no checkpoint)."""

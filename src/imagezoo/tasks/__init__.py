"""The user-facing tasks, each one function over a loaded model."""

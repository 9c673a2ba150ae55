"""Architectures in plain PyTorch and the registry of named models."""

"""Bundled synthesizers."""

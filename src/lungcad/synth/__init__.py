"""Synthetic chest-CT phantoms written in every dataset's native layout."""

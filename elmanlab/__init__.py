"""elmanlab: train and benchmark byte-level language models built from recurrent layers."""

__version__ = "0.1.0"       # the one declaration: pyproject.toml reads it

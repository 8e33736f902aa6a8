"""parsetune: fine-tune language models to turn text into structure, on Levanter/JAX."""

__version__ = "0.1.0"

"""bench: a multi-task benchmark suite for efficient convolution operators."""

__version__ = "0.1.0"

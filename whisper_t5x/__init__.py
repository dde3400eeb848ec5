"""whisper_t5x: Whisper speech recognition in JAX with T5X-style partitioning."""

__version__ = "0.1.0"

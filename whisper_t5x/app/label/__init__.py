"""``whisper-t5x label``: transcribe a Hugging Face dataset into Parquet, on one host or many."""

from whisper_t5x.app.label.flags import main
from whisper_t5x.app.label.lock import LabelBusyError

__all__ = ["main", "LabelBusyError"]

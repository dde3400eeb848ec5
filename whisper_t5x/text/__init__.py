"""Text out: the Whisper tokenizer and the language table."""

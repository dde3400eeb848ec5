"""Long audio: segmenters (windows, VAD rows, sequential seek), the Decoder, fallback, assemblers, word alignment."""

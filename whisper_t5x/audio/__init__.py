"""Audio in: loading and decoding files, log-mel features, voice activity detection; the audio constants."""

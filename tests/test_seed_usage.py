"""Whisper JAX's documented usage, run as written; only imports and the model id differ.

The model id is a local directory written by our ``save_pretrained`` (no hub
here), and the LibriSpeech sample is replaced by jfk.flac read with our loader.
Parameters replicated by ``flax.jax_utils.replicate`` and closed over inside
``pmap`` work because ``generate`` recognises the extra device axis.
"""

import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JFK_TEXT = open(os.path.join(ROOT, "samples", "jfk.txt")).read().strip()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from whisper_t5x import FlaxWhisperForConditionalGeneration

    directory = str(tmp_path_factory.mktemp("whisper-tiny.en"))
    model, params = FlaxWhisperForConditionalGeneration.from_pretrained("tiny.en", _do_init=False)
    model.save_pretrained(directory, params)
    return directory


def test_model_usage_snippet(model_dir):
    from whisper_t5x.audio import load_audio

    ds = [{"audio": {"array": load_audio(os.path.join(ROOT, "samples", "jfk.flac")), "sampling_rate": 16000}}]

    # ---- the seed's snippet; imports and model id changed ----
    import jax.numpy as jnp
    from flax.jax_utils import replicate
    from flax.training.common_utils import shard
    from jax import device_get, pmap
    from transformers import WhisperProcessor

    from whisper_t5x import FlaxWhisperForConditionalGeneration

    # load the processor and model
    processor = WhisperProcessor.from_pretrained(model_dir)
    model, params = FlaxWhisperForConditionalGeneration.from_pretrained(
        model_dir, dtype=jnp.bfloat16, _do_init=False,
    )

    def generate_fn(input_features):
        pred_ids = model.generate(
            input_features, task="transcribe", return_timestamps=False, max_length=model.config.max_length, params=params,
        )
        return pred_ids.sequences

    # pmap the generate function for data parallelism
    p_generate = pmap(generate_fn, "input_features")
    # replicate the parameters across devices
    params = replicate(params)

    # load a dummy sample from the LibriSpeech dataset
    sample = ds[0]["audio"]

    # pre-process: convert the audio array to log-mel input features
    input_features = processor(sample["array"], sampling_rate=sample["sampling_rate"], return_tensors="np").input_features
    # replicate the input features across devices for DP
    input_features = shard(input_features)

    # run the forward pass (JIT compiled the first time it is called)
    pred_ids = p_generate(input_features)
    output_ids = device_get(pred_ids.reshape(-1, model.config.max_length))

    # post-process: convert tokens ids to text string
    # (The seed decodes `pred_ids`, the per-device 3-D array, which transformers'
    # batch_decode rejects whatever the model; it means the `output_ids` it computed.)
    transcription = processor.batch_decode(output_ids, skip_special_tokens=True)
    # ---- end of the snippet ----

    normalise = lambda t: " ".join("".join(c for c in t.lower() if c.isalnum() or c.isspace()).split())  # noqa: E731
    assert output_ids.shape == (1, 448)
    assert normalise(transcription[0]) == normalise(JFK_TEXT)

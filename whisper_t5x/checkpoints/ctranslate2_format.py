"""Reader for CTranslate2 / faster-whisper ``model.bin`` (binary version 6).

Layout (little-endian, as written by ctranslate2's ``model_spec``): ``u32``
version, string model name, ``u32`` revision, ``u32`` variable count, then per
variable a string name, ``u8`` rank, ``u32`` dims, ``u8`` dtype id (float32,
int8, int16, int32, float16, bfloat16), ``u32`` byte count and the raw bytes;
then ``u32`` alias count and (alias, target) string pairs. Strings are a
``u16`` length (including a trailing NUL) and the bytes.

Whisper in CTranslate2 fuses projections: encoder and decoder self-attention
``linear_0`` is q, k, v stacked on the output axis; decoder cross-attention
``linear_0`` is q and ``linear_1`` is k, v stacked. ``int8`` weights carry a
per-row ``weight_scale`` with ``int8 = round(w * scale)``.
"""

import io
import struct
from typing import BinaryIO, Dict, List, Tuple

import numpy as np

from whisper_t5x.checkpoints.errors import CheckpointError

_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")


class _Chained(io.RawIOBase):
    """Read several files (``model.bin.part1``, ``.part2``) as one stream."""

    def __init__(self, paths: List[str]):
        self._files = [open(p, "rb") for p in paths]
        self._i = 0

    def readinto(self, buffer):
        while self._i < len(self._files):
            n = self._files[self._i].readinto(buffer)
            if n:
                return n
            self._i += 1
        return 0

    def readable(self):
        return True

    def close(self):
        for f in self._files:
            f.close()
        super().close()


def read_model_bin(paths: List[str]) -> Dict[str, np.ndarray]:
    """All variables (aliases resolved) from ``model.bin`` or its concatenated parts."""
    name = " + ".join(paths)
    stream = io.BufferedReader(_Chained(paths), buffer_size=1 << 20)

    def read(n: int) -> bytes:
        data = stream.read(n)
        if len(data) != n:
            raise CheckpointError(f"{name}: truncated model.bin (wanted {n} bytes, got {len(data)})")
        return data

    def unpack(fmt: str):
        return struct.unpack("<" + fmt, read(struct.calcsize("<" + fmt)))[0]

    def string() -> str:
        length = unpack("H")
        return read(length)[:-1].decode("utf-8")

    try:
        version = unpack("I")
        if version < 5 or version > 6:
            raise CheckpointError(f"{name}: CTranslate2 binary version {version} is not supported (5 or 6 expected)")
        model_name = string()
        if model_name != "WhisperSpec":
            raise CheckpointError(f"{name}: a CTranslate2 {model_name!r} model, not Whisper")
        unpack("I")  # revision
        variables: Dict[str, np.ndarray] = {}
        for _ in range(unpack("I")):
            var = string()
            shape = tuple(unpack("I") for _ in range(unpack("B")))
            type_id = unpack("B")
            nbytes = unpack("I")
            if type_id >= len(_DTYPES):
                raise CheckpointError(f"{name}: variable {var!r} has unknown dtype id {type_id}")
            raw = read(nbytes)
            if _DTYPES[type_id] == "bfloat16":
                bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
                array = bits.view(np.float32)
            else:
                array = np.frombuffer(raw, _DTYPES[type_id])
            if array.size != int(np.prod(shape, dtype=np.int64)):
                raise CheckpointError(f"{name}: variable {var!r} has {array.size} values for shape {shape}")
            variables[var] = array.reshape(shape)
        for _ in range(unpack("I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
        return variables
    except (struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(f"{name}: corrupt model.bin ({e})") from e
    finally:
        stream.close()


def _weight(v: Dict[str, np.ndarray], prefix: str) -> np.ndarray:
    w = v[prefix + "/weight"]
    scale = v.get(prefix + "/weight_scale")
    if w.dtype == np.int8 or scale is not None:
        if scale is None:
            raise CheckpointError(f"int8 weight {prefix} has no weight_scale")
        flat = w.reshape(w.shape[0], -1).astype(np.float32) / np.asarray(scale, np.float32).reshape(-1, 1)
        return flat.reshape(w.shape)
    return w


def _dense(v, prefix, rows=None):
    """A Flax dense dict from a CT2 linear; ``rows`` selects a slice of a fused projection."""
    w = _weight(v, prefix)
    b = v.get(prefix + "/bias")
    if rows is not None:
        w = w[rows]
        b = None if b is None else b[rows]
    out = {"kernel": np.ascontiguousarray(w.T)}
    if b is not None:
        out["bias"] = b
    return out


def _norm(v, prefix):
    return {"scale": v[prefix + "/gamma"], "bias": v[prefix + "/beta"]}


def _attention(v, prefix, fused_q_k_v: bool, d: int):
    if fused_q_k_v:
        q, k, vv = (_dense(v, prefix + "/linear_0", slice(i * d, (i + 1) * d)) for i in range(3))
        out = prefix + "/linear_1"
    else:
        q = _dense(v, prefix + "/linear_0")
        k, vv = (_dense(v, prefix + "/linear_1", slice(i * d, (i + 1) * d)) for i in range(2))
        out = prefix + "/linear_2"
    k.pop("bias", None)  # Whisper's key projection has no bias (CT2 stores zeros)
    return {"q_proj": q, "k_proj": k, "v_proj": vv, "out_proj": _dense(v, out)}


def _layer_count(v, prefix):
    count = 0
    while f"{prefix}/layer_{count}/ffn/linear_0/weight" in v:
        count += 1
    return count


def to_params(v: Dict[str, np.ndarray], source: str) -> Tuple[Dict, Dict]:
    """(params in loop layout, config sizes) from CT2 Whisper variables."""
    try:
        d = v["encoder/conv1/weight"].shape[0]
        enc, dec = _layer_count(v, "encoder"), _layer_count(v, "decoder")
        params = {
            "encoder": {
                "conv1": {"kernel": np.transpose(_weight(v, "encoder/conv1"), (2, 1, 0)), "bias": v["encoder/conv1/bias"]},
                "conv2": {"kernel": np.transpose(_weight(v, "encoder/conv2"), (2, 1, 0)), "bias": v["encoder/conv2/bias"]},
                "embed_positions": {"embedding": v["encoder/position_encodings/encodings"]},
                "layers": {},
                "layer_norm": _norm(v, "encoder/layer_norm"),
            },
            "decoder": {
                "embed_tokens": {"embedding": _weight(v, "decoder/embeddings")},
                "embed_positions": {"embedding": v["decoder/position_encodings/encodings"]},
                "layers": {},
                "layer_norm": _norm(v, "decoder/layer_norm"),
            },
        }
        for i in range(enc):
            p = f"encoder/layer_{i}"
            params["encoder"]["layers"][str(i)] = {
                "self_attn": _attention(v, p + "/self_attention", True, d),
                "self_attn_layer_norm": _norm(v, p + "/self_attention/layer_norm"),
                "fc1": _dense(v, p + "/ffn/linear_0"),
                "fc2": _dense(v, p + "/ffn/linear_1"),
                "final_layer_norm": _norm(v, p + "/ffn/layer_norm"),
            }
        for i in range(dec):
            p = f"decoder/layer_{i}"
            params["decoder"]["layers"][str(i)] = {
                "self_attn": _attention(v, p + "/self_attention", True, d),
                "self_attn_layer_norm": _norm(v, p + "/self_attention/layer_norm"),
                "encoder_attn": _attention(v, p + "/attention", False, d),
                "encoder_attn_layer_norm": _norm(v, p + "/attention/layer_norm"),
                "fc1": _dense(v, p + "/ffn/linear_0"),
                "fc2": _dense(v, p + "/ffn/linear_1"),
                "final_layer_norm": _norm(v, p + "/ffn/layer_norm"),
            }
        sizes = dict(
            vocab_size=int(v["decoder/embeddings/weight"].shape[0]),
            num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
            d_model=int(d),
            encoder_layers=enc,
            decoder_layers=dec,
            encoder_attention_heads=int(v["encoder/num_heads"]),
            decoder_attention_heads=int(v["decoder/num_heads"]),
            encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
            max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
            max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: CTranslate2 Whisper variable {e} is missing") from e
    return params, sizes

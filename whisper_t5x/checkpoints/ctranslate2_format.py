"""Reader for CTranslate2 / faster-whisper Whisper models (``model.bin``).

Binary layout (little-endian, as written by ctranslate2's
``specs/model_spec.py``; binary version 6 today):

* ``u32`` binary version; from version 2: model spec name (string) and
  ``u32`` spec revision (``WhisperSpec``, revision 3);
* ``u32`` variable count, then per variable: name (string), ``u8`` rank,
  ``rank x u32`` dims, then (version >= 4) ``u8`` dtype id -- 0 float32,
  1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16 -- and ``u32`` byte count
  (before version 4: ``u8`` item size and ``u32`` element count), then the raw
  bytes;
* (version >= 3) ``u32`` alias count and (alias, target) string pairs; an
  alias also stands for its target's ``_scale``.

Strings are ``u16`` length (counting a trailing NUL) + UTF-8 bytes + NUL.

Whisper variables (converter: ``ctranslate2.converters.transformers.WhisperLoader``):

* ``encoder/conv{1,2}/weight`` in PyTorch layout ``(out, in, width)``, ``bias``;
* ``{encoder,decoder}/position_encodings/encodings`` (the audio sinusoids
  stored as a table), ``decoder/embeddings/weight`` (vocab, d);
* ``.../self_attention/linear_0`` = q, k, v stacked on the output axis
  ``(3d, d)`` with a zero k bias; ``linear_1`` = out;
* decoder ``.../attention/linear_0`` = q, ``linear_1`` = k, v stacked
  ``(2d, d)`` (zero k bias), ``linear_2`` = out;
* ``.../ffn/linear_0`` = fc1, ``linear_1`` = fc2; layer norms ``gamma``/``beta``
  under ``self_attention/layer_norm``, ``attention/layer_norm``,
  ``ffn/layer_norm``, and ``{encoder,decoder}/layer_norm``;
* ``decoder/projection/weight``: an alias of the embeddings (tied);
* scalars: ``num_heads`` (int16), ``pre_norm``, ``activation`` ... (ignored).

Quantization (``_quantize`` in model_spec): ``int8`` weights (linears, convs
reshaped to ``(out, in*width)``, embeddings) carry a float ``weight_scale``
per output row with ``int8 = rint(w * scale)``, ``scale = 127 / max|row|``,
so ``w ~= int8 / scale``. ``int16`` uses one scalar scale
``2**10 / max|w|`` the same way. Other variables are stored float32,
float16 or bfloat16 as requested (``int8_float16`` and so on).
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from whisper_t5x.audio.constants import INPUT_STRIDE, N_FRAMES
from whisper_t5x.checkpoints.errors import (
    CheckpointError,
    CorruptCheckpointError,
    ShapeMismatchError,
    UnsupportedFormatError,
)
from whisper_t5x.checkpoints.params import sinusoids

SUPPORTED_VERSIONS = range(2, 7)
SPEC_NAME = "WhisperSpec"


def _dtype(type_id: int) -> np.dtype:
    if type_id == 5:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    table = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2"}
    if type_id not in table:
        raise KeyError(type_id)
    return np.dtype(table[type_id])


class _Segments:
    """Several memory-mapped files read as one byte string (``model.bin.part1`` + ``.part2``).

    Reads that fall inside one file are zero-copy views of its copy-on-write
    mapping; a read across a file boundary copies just that range.
    """

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self.maps: List[Any] = []
        self.starts: List[int] = []
        total = 0
        for path in self.paths:
            try:
                size = os.path.getsize(path)
                with open(path, "rb") as f:
                    self.maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else b"")
            except OSError as e:
                raise CorruptCheckpointError(f"{path}: cannot open ({e})") from e
            self.starts.append(total)
            total += size
        self.size = total

    def read(self, offset: int, count: int):
        """``(buffer, buffer offset)`` holding ``count`` bytes at ``offset``."""
        if offset + count > self.size:
            raise EOFError(offset + count)
        for i in range(len(self.maps) - 1, -1, -1):
            if offset >= self.starts[i]:
                break
        local = offset - self.starts[i]
        if local + count <= len(self.maps[i]):
            return self.maps[i], local
        pieces = []
        remaining = count
        while remaining:
            chunk = bytes(self.maps[i][local:local + remaining])
            pieces.append(chunk)
            remaining -= len(chunk)
            i, local = i + 1, 0
        return b"".join(pieces), 0


def read_model_bin(paths: Sequence[str]) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """(variables with aliases resolved, header info) of ``model.bin`` or its parts in order."""
    name = " + ".join(paths)
    data = _Segments(paths)
    pos = 0

    def take(count: int):
        nonlocal pos
        buffer, at = data.read(pos, count)
        pos += count
        return buffer, at

    def unpack(fmt: str):
        buffer, at = take(struct.calcsize("<" + fmt))
        return struct.unpack_from("<" + fmt, buffer, at)[0]

    def string() -> str:
        length = unpack("H")
        buffer, at = take(length)
        raw = bytes(buffer[at:at + length])
        if not raw.endswith(b"\0"):
            raise ValueError("string without its NUL terminator")
        return raw[:-1].decode("utf-8")

    variables: Dict[str, np.ndarray] = {}
    try:
        version = unpack("I")
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedFormatError(
                f"{name}: not a CTranslate2 model this reader supports (binary version {version}; "
                f"supported {SUPPORTED_VERSIONS.start}..{SUPPORTED_VERSIONS.stop - 1})"
            )
        spec = string()
        if spec != SPEC_NAME:
            raise UnsupportedFormatError(f"{name}: a CTranslate2 {spec!r} model, not {SPEC_NAME}")
        revision = unpack("I")
        count = unpack("I")
        for _ in range(count):
            var = string()
            shape = tuple(unpack("I") for _ in range(unpack("B")))
            if version >= 4:
                type_id = unpack("B")
                nbytes = unpack("I")
                try:
                    dtype = _dtype(type_id)
                except KeyError:
                    raise UnsupportedFormatError(f"{name}: variable {var!r} has unknown dtype id {type_id}") from None
            else:
                item_size = unpack("B")
                dtype = {4: np.dtype("<f4"), 2: np.dtype("<i2"), 1: np.dtype("i1")}[item_size]
                nbytes = unpack("I") * item_size
            elements = int(np.prod(shape, dtype=np.int64))
            if nbytes != elements * dtype.itemsize:
                raise CorruptCheckpointError(
                    f"{name}: corrupt model.bin: variable {var!r} has {nbytes} bytes for shape {shape} {dtype}"
                )
            buffer, at = take(nbytes)
            variables[var] = np.frombuffer(buffer, dtype=dtype, count=elements, offset=at).reshape(shape)
        aliases = unpack("I") if version >= 3 else 0
        for _ in range(aliases):
            alias, target = string(), string()
            if target not in variables:
                raise CorruptCheckpointError(f"{name}: corrupt model.bin: alias {alias!r} of unknown variable {target!r}")
            variables[alias] = variables[target]
            if target + "_scale" in variables:
                variables[alias + "_scale"] = variables[target + "_scale"]
    except CheckpointError:
        raise
    except EOFError:
        raise CorruptCheckpointError(
            f"{name}: truncated model.bin ({data.size} bytes; the data ends inside "
            f"{'variable ' + repr(var) if 'var' in locals() else 'the header'})"
        ) from None
    except (struct.error, UnicodeDecodeError, ValueError, KeyError) as e:
        raise CorruptCheckpointError(f"{name}: corrupt model.bin ({type(e).__name__}: {e})") from e
    if pos != data.size:
        raise CorruptCheckpointError(f"{name}: corrupt model.bin ({data.size - pos} unexpected bytes after the aliases)")
    return variables, {"binary_version": version, "spec": spec, "revision": revision}


# ---------------------------------------------------------------------- variables -> params
def dequantize(variables: Dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """``prefix/weight`` as floats: int8/int16 divided by ``weight_scale`` (per row or scalar)."""
    weight = variables[prefix + "/weight"]
    if weight.dtype.kind not in "iu":
        return weight
    scale = variables.get(prefix + "/weight_scale")
    if scale is None:
        raise CorruptCheckpointError(f"CTranslate2 variable {prefix + '/weight_scale'!r} is missing")
    scale = np.asarray(scale, dtype=np.float32)
    rows = weight.reshape(weight.shape[0], -1).astype(np.float32)
    if scale.size == 1:
        rows /= scale.reshape(())
    else:
        if scale.size != weight.shape[0]:
            raise CorruptCheckpointError(f"{prefix}/weight_scale has {scale.size} values for {weight.shape[0]} rows")
        rows /= scale.reshape(-1, 1)
    return rows.reshape(weight.shape)


def _dense(v, prefix: str, rows: Optional[slice] = None, bias: bool = True) -> Dict[str, np.ndarray]:
    """Flax Dense from a CT2 linear ``(out, in)``; ``rows`` picks one projection of a fused one."""
    w = dequantize(v, prefix)
    b = v.get(prefix + "/bias")
    if rows is not None:
        w = w[rows]
        b = None if b is None else b[rows]
    out = {"kernel": w.T}  # a view: cast_params copies it once, transposed and cast in one pass
    if bias:
        out["bias"] = b if b is not None else np.zeros(w.shape[0], w.dtype)
    elif b is not None and np.any(np.asarray(b, dtype=np.float32)):
        raise UnsupportedFormatError(f"{prefix}/bias is nonzero for Whisper's bias-free key projection")
    return out


def _norm(v, prefix: str) -> Dict[str, np.ndarray]:
    return {"scale": v[prefix + "/gamma"], "bias": v[prefix + "/beta"]}


def _attention(v, prefix: str, d: int, cross: bool) -> Dict[str, Any]:
    def part(i):
        return slice(i * d, (i + 1) * d)

    if cross:
        fused_q, fused_kv, out = prefix + "/linear_0", prefix + "/linear_1", prefix + "/linear_2"
        q = _dense(v, fused_q)
        k, value = _dense(v, fused_kv, part(0), bias=False), _dense(v, fused_kv, part(1))
        shapes = {fused_q: d, fused_kv: 2 * d}
    else:
        fused, out = prefix + "/linear_0", prefix + "/linear_1"
        q, k, value = _dense(v, fused, part(0)), _dense(v, fused, part(1), bias=False), _dense(v, fused, part(2))
        shapes = {fused: 3 * d}
    for name, rows in shapes.items():
        if v[name + "/weight"].shape != (rows, d):
            raise ShapeMismatchError(f"{name}/weight has shape {v[name + '/weight'].shape}, expected {(rows, d)} (fused)")
    return {"q_proj": q, "k_proj": k, "v_proj": value, "out_proj": _dense(v, out)}


def _conv(v, prefix: str) -> Dict[str, np.ndarray]:
    w = dequantize(v, prefix)
    if w.ndim != 3:
        raise ShapeMismatchError(f"{prefix}/weight has shape {w.shape}, expected (out, in, width)")
    return {"kernel": np.transpose(w, (2, 1, 0)), "bias": v[prefix + "/bias"]}  # copied by cast_params


def _layer_count(v, part: str) -> int:
    count = 0
    while f"{part}/layer_{count}/ffn/linear_0/weight" in v:
        count += 1
    return count


class _Tracked(dict):
    """A dict that remembers which keys were read, so unread weights can be reported."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        if key not in self:
            raise CorruptCheckpointError(f"CTranslate2 Whisper variable {key!r} is missing")
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def to_params(v: Dict[str, np.ndarray], source: str) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """(params in loop layout, WhisperConfig size fields) from CT2 Whisper variables.

    Every non-scalar variable must be used: an unknown weight means a model
    variant this reader does not understand, and is an error rather than a
    silently different model.
    """
    v = _Tracked(v)
    try:
        vocab, d = v["decoder/embeddings/weight"].shape
        enc, dec = _layer_count(v, "encoder"), _layer_count(v, "decoder")
        audio_positions = v.get("encoder/position_encodings/encodings")
        if audio_positions is None:  # not stored: Whisper's fixed sinusoids for 30 s windows
            audio_positions = sinusoids(N_FRAMES // INPUT_STRIDE, d)
        embeddings = dequantize(v, "decoder/embeddings")
        params = {
            "encoder": {
                "conv1": _conv(v, "encoder/conv1"),
                "conv2": _conv(v, "encoder/conv2"),
                "embed_positions": {"embedding": audio_positions},
                "layers": {},
                "layer_norm": _norm(v, "encoder/layer_norm"),
            },
            "decoder": {
                "embed_tokens": {"embedding": embeddings},
                "embed_positions": {"embedding": v["decoder/position_encodings/encodings"]},
                "layers": {},
                "layer_norm": _norm(v, "decoder/layer_norm"),
            },
        }
        for i in range(enc):
            p = f"encoder/layer_{i}"
            params["encoder"]["layers"][str(i)] = {
                "self_attn": _attention(v, p + "/self_attention", d, cross=False),
                "self_attn_layer_norm": _norm(v, p + "/self_attention/layer_norm"),
                "fc1": _dense(v, p + "/ffn/linear_0"),
                "fc2": _dense(v, p + "/ffn/linear_1"),
                "final_layer_norm": _norm(v, p + "/ffn/layer_norm"),
            }
        for i in range(dec):
            p = f"decoder/layer_{i}"
            params["decoder"]["layers"][str(i)] = {
                "self_attn": _attention(v, p + "/self_attention", d, cross=False),
                "self_attn_layer_norm": _norm(v, p + "/self_attention/layer_norm"),
                "encoder_attn": _attention(v, p + "/attention", d, cross=True),
                "encoder_attn_layer_norm": _norm(v, p + "/attention/layer_norm"),
                "fc1": _dense(v, p + "/ffn/linear_0"),
                "fc2": _dense(v, p + "/ffn/linear_1"),
                "final_layer_norm": _norm(v, p + "/ffn/layer_norm"),
            }
        # Scalar flags of the decoder spec that must hold for Whisper's architecture.
        for flag, required, meaning in (("decoder/scale_embeddings", 0, "scaled token embeddings"),
                                        ("decoder/pre_norm", 1, "post-norm layers"),
                                        ("decoder/activation", 3, "a non-GELU activation"),
                                        ("decoder/alibi", 0, "ALiBi positions")):
            if flag in v and int(v[flag]) != required:
                raise UnsupportedFormatError(f"{flag}={int(v[flag])}: {meaning}, not Whisper's architecture")
        projection = v.get("decoder/projection/weight")
        v.get("decoder/projection/weight_scale")  # an alias's scale comes along with it
        if projection is not None and projection is not v["decoder/embeddings/weight"]:
            projection = dequantize(v, "decoder/projection")
            if projection.shape != embeddings.shape or not np.array_equal(projection, embeddings):
                raise UnsupportedFormatError("decoder/projection differs from decoder/embeddings; Whisper ties them")
        sizes = dict(
            vocab_size=int(vocab),
            num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
            d_model=int(d),
            encoder_layers=enc,
            decoder_layers=dec,
            encoder_attention_heads=int(v["encoder/num_heads"]),
            decoder_attention_heads=int(v["decoder/num_heads"]),
            encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]) if enc else 4 * int(d),
            decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]) if dec else 4 * int(d),
            max_source_positions=int(audio_positions.shape[0]),
            max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        )
    except CheckpointError as e:
        raise e.located(source) from None
    except (ValueError, IndexError) as e:  # a variable of the wrong rank or size for its role
        raise ShapeMismatchError(f"{source}: {e}") from None
    unused = sorted(k for k, value in v.items() if k not in v.read and np.ndim(value) > 0
                    and value.dtype.kind == "f" or k not in v.read and k.endswith(("/weight", "/bias")))
    if unused:
        raise UnsupportedFormatError(
            f"{source}: CTranslate2 variables this Whisper reader does not know: {', '.join(unused[:8])}"
            + (" ..." if len(unused) > 8 else "")
        )
    return params, sizes


def load(paths: Sequence[str], source: str) -> Tuple[Dict[str, Any], Dict[str, int], Dict[str, Any]]:
    """(params, sizes, header info) of a CT2 Whisper model split over ``paths``."""
    variables, info = read_model_bin(paths)
    params, sizes = to_params(variables, source)
    return params, sizes, info

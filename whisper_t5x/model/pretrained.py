"""``FlaxWhisperForConditionalGeneration``: the model surface Whisper JAX users know.

A thin, stateless-by-default wrapper: it holds the config and the Flax module,
and every method takes ``params`` explicitly (or falls back to ``self.params``
when the model was built with ``_do_init=True``). Calls are compiled once per
static configuration with ``jax.jit`` and work unchanged inside a user's own
``jit`` / ``pmap`` / partitioned function.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze

from whisper_t5x.decoding import generate as decoding
from whisper_t5x.model.config import WhisperConfig
from whisper_t5x.model.whisper import WhisperModule

Array = jax.Array


class EncoderOutput(NamedTuple):
    last_hidden_state: Array


class Seq2SeqOutput(NamedTuple):
    logits: Array
    encoder_last_hidden_state: Array


def _cast_floats(tree, dtype, mask=None):
    def cast(x, keep=True):
        if keep and jnp.issubdtype(jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    if mask is None:
        return jax.tree_util.tree_map(cast, tree)
    return jax.tree_util.tree_map(cast, tree, mask)


class FlaxWhisperForConditionalGeneration:
    """Whisper encoder-decoder with Hugging Face Flax's calling conventions.

    ``dtype`` is the compute dtype (float32, bfloat16 or float16); parameters
    keep their own dtype (``param_dtype``, float32 by default) and are cast at
    use, so ``to_bf16(params)`` halves memory independently of compute.
    """

    def __init__(
        self,
        config: WhisperConfig,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        _do_init: bool = True,
        seed: int = 0,
        tokenizer_file: Optional[str] = None,
        generation_config: Optional[dict] = None,
        encoder_dtype: Any = None,
    ):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype)
        # encoder_dtype: the encoder's compute and parameter dtype when it differs (WhisperModule.encoder_dtype)
        self.encoder_dtype = None if encoder_dtype is None else jnp.dtype(encoder_dtype)
        self.module = WhisperModule(config, dtype=self.dtype, param_dtype=self.param_dtype,
                                    encoder_dtype=self.encoder_dtype)
        self.tokenizer_file = tokenizer_file
        self.generation_config = dict(generation_config or {})
        self._tokenizer = None
        # One compiled generate program per static DecodeOptions.
        self._generate_cache: dict = {}
        self.params = self.init_weights(jax.random.PRNGKey(seed)) if _do_init else None

    # ------------------------------------------------------------------ init
    def dummy_inputs(self, batch_size: int = 1):
        features = jnp.zeros((batch_size, self.config.num_mel_bins, self.config.num_frames), jnp.float32)
        ids = jnp.full((batch_size, 1), self.config.decoder_start_token_id, jnp.int32)
        return features, ids

    def init_weights(self, rng: Array) -> Any:
        features, ids = self.dummy_inputs()
        return jax.jit(self.module.init)(rng, features, ids)["params"]

    @functools.cached_property
    def params_shape_tree(self) -> Any:
        from whisper_t5x.program_cache import cached_shapes

        def shapes():
            features, ids = self.dummy_inputs()
            return jax.eval_shape(self.module.init, jax.random.PRNGKey(0), features, ids)["params"]

        return cached_shapes(shapes, "params_shapes", key=self.module)

    @functools.cached_property
    def params_axes(self) -> Any:
        """The ``params_axes`` collection: logical axis names of every parameter."""
        features, ids = self.dummy_inputs()
        return jax.eval_shape(self.module.init, jax.random.PRNGKey(0), features, ids)["params_axes"]

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        _do_init: bool = True,
        from_pt: bool = False,
        scan_layers: bool = False,
        cache_dir: Optional[str] = None,
        **kwargs: Any,
    ):
        """Load a checkpoint in any supported format (see ``whisper_t5x.checkpoints``).

        Returns ``(model, params)`` with ``_do_init=False`` (the Whisper JAX
        idiom) and a model holding ``model.params`` otherwise. ``from_pt`` is
        accepted for compatibility; the format is detected from the files.
        """
        del from_pt  # formats are detected, not declared
        from whisper_t5x.checkpoints import layout, load_checkpoint

        if kwargs:
            raise TypeError(f"from_pretrained got unexpected arguments: {sorted(kwargs)}")
        loaded = load_checkpoint(name_or_path, dtype=np.dtype(jnp.dtype(param_dtype)), cache_dir=cache_dir)
        config = loaded.config.replace(scan_layers=scan_layers)
        model = cls(
            config,
            dtype=dtype,
            param_dtype=param_dtype,
            _do_init=False,
            tokenizer_file=loaded.tokenizer_file,
            generation_config=loaded.generation_config,
        )
        params = layout.to_scan_layout(loaded.params) if scan_layers else layout.to_loop_layout(loaded.params)
        params = model.check_params(params)
        if _do_init:
            model.params = params
            return model
        return model, params

    def check_params(self, params: Any) -> Any:
        """Check ``params`` against the model's expected tree; returns them frozen-free."""
        expected = self.params_shape_tree
        params = unfreeze(params) if hasattr(params, "unfreeze") else params
        exp_leaves = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
        got_leaves = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
        missing = sorted(set(exp_leaves) - set(got_leaves))
        extra = sorted(set(got_leaves) - set(exp_leaves))
        wrong = sorted(k for k in set(exp_leaves) & set(got_leaves) if tuple(exp_leaves[k]) != tuple(got_leaves[k]))
        if missing or extra or wrong:
            details = []
            if missing:
                details.append(f"missing {missing[:5]}")
            if extra:
                details.append(f"unexpected {extra[:5]}")
            if wrong:
                details.append(
                    "shape mismatch " + ", ".join(f"{k}: {got_leaves[k]} vs {exp_leaves[k]}" for k in wrong[:5])
                )
            raise ValueError("parameters do not match the model config: " + "; ".join(details))
        return params

    def save_pretrained(self, directory: str, params: Any = None) -> None:
        from whisper_t5x.checkpoints import save_pretrained

        save_pretrained(
            directory,
            self.config,
            jax.device_get(self._params(params)),
            tokenizer_file=self.tokenizer_file,
            generation_config=self.generation_config,
        )

    # ------------------------------------------------------------------ dtype helpers
    def to_bf16(self, params: Any, mask: Any = None) -> Any:
        return _cast_floats(params, jnp.bfloat16, mask)

    def to_fp16(self, params: Any, mask: Any = None) -> Any:
        return _cast_floats(params, jnp.float16, mask)

    def to_fp32(self, params: Any, mask: Any = None) -> Any:
        return _cast_floats(params, jnp.float32, mask)

    # ------------------------------------------------------------------ forward
    def _params(self, params: Any) -> Any:
        if params is None:
            if self.params is None:
                raise ValueError("no params given and the model holds none (it was loaded with _do_init=False)")
            return self.params
        return self._unreplicate(params)

    def _unreplicate(self, params: Any) -> Any:
        """Accept parameters replicated with ``flax.jax_utils.replicate``.

        Whisper JAX's documented pmap snippet replicates ``params`` and closes
        over them inside the pmapped function, so every leaf arrives with an
        extra leading device axis. The replicas are identical: use the first.
        """
        expected = jax.tree_util.tree_leaves(self.params_shape_tree)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        if len(leaves) == len(expected) and leaves and all(
            np.ndim(x) == len(e.shape) + 1 and tuple(np.shape(x)[1:]) == tuple(e.shape) for x, e in zip(leaves, expected)
        ):
            return jax.tree_util.tree_unflatten(treedef, [x[0] for x in leaves])
        return params

    @functools.cached_property
    def _jit_encode(self):
        return jax.jit(lambda p, f: self.module.apply({"params": p}, f, method=WhisperModule.encode))

    @functools.cached_property
    def _jit_forward(self):
        def forward(p, f, ids, mask, pos):
            return self.module.apply(
                {"params": p}, f, ids, decoder_attention_mask=mask, decoder_position_ids=pos
            )

        return jax.jit(forward)

    def encode(self, input_features: Any, params: Any = None, **unused: Any) -> EncoderOutput:
        hidden = self._jit_encode(self._params(params), jnp.asarray(input_features))
        return EncoderOutput(hidden)

    def __call__(
        self,
        input_features: Any,
        decoder_input_ids: Any,
        params: Any = None,
        decoder_attention_mask: Any = None,
        decoder_position_ids: Any = None,
        **unused: Any,
    ) -> Seq2SeqOutput:
        out = self._jit_forward(
            self._params(params),
            jnp.asarray(input_features),
            jnp.asarray(decoder_input_ids, jnp.int32),
            decoder_attention_mask,
            decoder_position_ids,
        )
        return Seq2SeqOutput(out["logits"], out["encoder_last_hidden_state"])

    # ------------------------------------------------------------------ generate
    @property
    def tokenizer(self):
        """The checkpoint's tokenizer (``None`` for random-init models)."""
        if self._tokenizer is None and self.tokenizer_file:
            from whisper_t5x.text.tokenizer import WhisperTokenizer

            self._tokenizer = WhisperTokenizer.from_file(self.tokenizer_file)
        return self._tokenizer

    def language_token(self, language: Union[None, int, str]) -> Optional[int]:
        """Token id of ``language`` ("en", "english", "<|en|>" or a token id)."""
        if language is None:
            return None
        special = self.config.special_tokens
        if isinstance(language, (int, np.integer)):
            token = int(language)
        else:
            from whisper_t5x.text import languages

            token = special.first_language + languages.language_index(language, special.num_languages)
        if token not in special.language_ids:
            raise ValueError(f"{language!r} is not a language token of this model")
        return token

    def decode_options(
        self,
        task: Optional[str] = None,
        language: Union[None, int, str] = None,
        return_timestamps: bool = False,
        max_length: Optional[int] = None,
        num_beams: int = 1,
        length_penalty: Optional[float] = None,
        prompt_length: int = 0,
        sample: bool = False,
        suppress_tokens: Optional[Sequence[int]] = None,
        begin_suppress_tokens: Optional[Sequence[int]] = None,
        vocab_dtype: Optional[str] = None,
    ) -> decoding.DecodeOptions:
        """Validate user-facing arguments into static :class:`DecodeOptions`."""
        cfg = self.config
        special = cfg.special_tokens
        if task not in (None, "transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        lang = self.language_token(language)
        if not cfg.is_multilingual:
            if task == "translate":
                raise ValueError("this is an English-only checkpoint: it cannot translate (task='translate')")
            if lang is not None and lang != special.first_language:
                raise ValueError(
                    f"this is an English-only checkpoint: language {language!r} is not supported, only English"
                )
            lang = None
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        context = (1 + prompt_length) if prompt_length else 0
        if max_length is None:
            max_length = cfg.max_target_positions - context
        if suppress_tokens is None:
            suppress_tokens = self.default_suppress_tokens()
        if begin_suppress_tokens is None:
            begin_suppress_tokens = cfg.begin_suppress_tokens or (220, special.eot)
        return decoding.DecodeOptions(
            task="translate" if task == "translate" else "transcribe",
            language_token=lang,
            return_timestamps=bool(return_timestamps),
            max_length=int(max_length),
            prompt_length=int(prompt_length),
            num_beams=int(num_beams),
            length_penalty=length_penalty,
            suppress_tokens=tuple(sorted(set(int(t) for t in suppress_tokens))),
            begin_suppress_tokens=tuple(int(t) for t in begin_suppress_tokens),
            sample=bool(sample),
            vocab_dtype=None if vocab_dtype is None else jnp.dtype(vocab_dtype).name,
        )

    def default_suppress_tokens(self) -> tuple:
        """The checkpoint's suppress list plus the special tokens that are never sampled."""
        special = self.config.special_tokens
        ids = set(self.config.suppress_tokens) or set(self.generation_config.get("suppress_tokens") or ())
        ids.update({special.translate, special.transcribe, special.sot, special.sot_prev, special.sot_lm})
        ids.add(special.no_speech)
        return tuple(sorted(ids))

    def _generate_fn(self, options: decoding.DecodeOptions):
        # Greedy and sampling share a program (generate decides from the traced temperature).
        options = dataclasses.replace(options, sample=False)
        cache = self._generate_cache
        if options not in cache:

            def run(params, features, prompt, temperature, rng):
                return decoding.generate(self.module, params, features, options, prompt, temperature, rng)

            cache[options] = jax.jit(run)
        return cache[options]

    def generate(
        self,
        input_features: Any,
        params: Any = None,
        task: Optional[str] = None,
        language: Union[None, int, str] = None,
        return_timestamps: bool = False,
        max_length: Optional[int] = None,
        num_beams: int = 1,
        temperature: float = 0.0,
        prompt_ids: Any = None,
        length_penalty: Optional[float] = None,
        rng: Any = None,
        suppress_tokens: Optional[Sequence[int]] = None,
        begin_suppress_tokens: Optional[Sequence[int]] = None,
        vocab_dtype: Optional[str] = None,
        **unused: Any,
    ) -> decoding.GenerateOutput:
        """Decode log-mel windows; see :mod:`whisper_t5x.decoding.generate` for the rules."""
        prompt = None if prompt_ids is None else jnp.asarray(prompt_ids, jnp.int32).reshape(-1)
        options = self.decode_options(
            task=task,
            language=language,
            return_timestamps=return_timestamps,
            max_length=max_length,
            num_beams=num_beams,
            length_penalty=length_penalty,
            prompt_length=0 if prompt is None else int(prompt.shape[0]),
            sample=isinstance(temperature, jax.core.Tracer) or float(temperature) > 0.0,
            suppress_tokens=suppress_tokens,
            begin_suppress_tokens=begin_suppress_tokens,
            vocab_dtype=vocab_dtype,
        )
        if rng is None:
            rng = jax.random.PRNGKey(0)
        return self._generate_fn(options)(
            self._params(params), jnp.asarray(input_features), prompt, jnp.float32(temperature), rng
        )

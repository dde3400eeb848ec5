"""Evaluation during training: the eval split's loss, and its word error rate decoded through the Decoder.

The loss comes from the partitioned eval step, summed over the split's batches
and divided once by the target tokens. The WER decodes the same rows with the
one :class:`~whisper_t5x.longform.decoder.Decoder` (greedy, no fallback: a
stable measure between evaluations), normalises references and hypotheses with
the label job's normaliser (:func:`whisper_t5x.text.normalize.normalizer_for`)
and counts word edits with ``jiwer``. ``whisper-normalizer`` (a copy of
openai-whisper's English normaliser) is not used: it differs from ours on the
cases ``tests/test_normalize.py`` lists ("a second" -> "a 2nd", spelled digits
glued into one number), so the label job's and the trainer's WERs would drift
apart; ``tests/test_training_io_eval.py`` pins where the two agree and where they do not.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from whisper_t5x.text.normalize import normalizer_for

logger = logging.getLogger("whisper_t5x.training.evaluate")

__all__ = ["EvalSet", "Evaluator", "wer_counts", "word_error_rate"]


def wer_counts(references: Sequence[str], hypotheses: Sequence[str],
               language: Optional[str] = "en") -> Tuple[int, int]:
    """``(word edits, reference words)`` over pairs, after normalising both sides (jiwer counts the edits).

    A reference with no words after normalising counts every hypothesis word as an insertion.
    """
    import jiwer

    norm = normalizer_for(language)
    refs = [norm(r or "") for r in references]
    hyps = [norm(h or "") for h in hypotheses]
    edits = sum(len(h.split()) for r, h in zip(refs, hyps) if not r.split())
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.split()]
    words = sum(len(r.split()) for r, _ in pairs)
    if pairs:
        out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
        edits += out.substitutions + out.deletions + out.insertions
    return int(edits), int(words)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], language: Optional[str] = "en") -> float:
    """Corpus WER: all edits over all reference words (``nan`` without reference words)."""
    edits, words = wer_counts(references, hypotheses, language)
    return edits / words if words else float("nan")


@dataclasses.dataclass
class EvalSet:
    """The eval split, prepared once: batches (this process's rows), real rows per batch, references."""

    batches: List[Any]  # data.HostBatch
    real: List[int]  # rows of each batch that are not padding
    references: List[List[str]]  # per batch, per real row


class Evaluator:
    """Loss and WER of parameters on an :class:`EvalSet`.

    ``loss_step(params, fields, teacher_params)`` runs the partitioned eval
    step on one batch (the caller makes the global arrays); ``decoder`` is a
    :class:`~whisper_t5x.longform.decoder.Decoder` over the trained model (its
    ``params`` are replaced before each decode) and ``request`` its greedy
    :class:`~whisper_t5x.longform.decoder.DecodeRequest`. ``sum_over_processes``
    adds a small vector over processes (multi-host).
    """

    def __init__(self, eval_set: EvalSet, loss_step: Callable, decoder: Any = None, request: Any = None,
                 language: Optional[str] = "en", sum_over_processes: Optional[Callable] = None):
        self.eval_set = eval_set
        self.loss_step = loss_step
        self.decoder = decoder
        self.request = request
        self.language = language
        self._sum = sum_over_processes or (lambda v: v)

    def loss(self, params: Any, teacher_params: Any = None) -> Dict[str, float]:
        import jax

        sums: Dict[str, float] = {}
        outs = [self.loss_step(params, b.fields, teacher_params) for b in self.eval_set.batches]
        for m in jax.device_get(outs):
            for k, v in m.items():
                if k.endswith("_sum") or k == "token_count":
                    sums[k] = sums.get(k, 0.0) + float(v)
        count = max(sums.get("token_count", 0.0), 1.0)
        return {k[:-4]: v / count for k, v in sums.items() if k.endswith("_sum")}

    def transcripts(self, params: Any) -> Tuple[List[str], List[str]]:
        """``(references, hypotheses)`` of this process's real eval rows."""
        from whisper_t5x.longform.decoder import Row

        self.decoder.params = params
        refs: List[str] = []
        hyps: List[str] = []
        for batch, real, references in zip(self.eval_set.batches, self.eval_set.real, self.eval_set.references):
            features = batch.fields["input_features"]
            rows = [Row(np.asarray(features[k])) for k in range(real)]
            if rows:
                hyps.extend(r.text for r in self.decoder.decode(rows, self.request))
                refs.extend(references[:real])
        return refs, hyps

    def __call__(self, params: Any, teacher_params: Any = None, decode_params: Any = None) -> Dict[str, Any]:
        """``{"loss", ...parts, "wer", "wer_words"}``; ``decode_params``: the parameters as the decoder
        takes them (default ``params``)."""
        out: Dict[str, Any] = dict(self.loss(params, teacher_params))
        if self.decoder is not None:
            refs, hyps = self.transcripts(params if decode_params is None else decode_params)
            edits, words = wer_counts(refs, hyps, self.language)
            edits, words = (int(x) for x in self._sum(np.asarray([edits, words], np.int64)))
            out.update(wer=edits / words if words else float("nan"), wer_words=float(words))
            out["examples"] = [{"reference": r, "hypothesis": h} for r, h in list(zip(refs, hyps))[:3]]
        return out

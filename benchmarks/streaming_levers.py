"""Live-transcription levers measured without the clock: update cost per encoder size, WER cost, replay WER.

``benchmarks/streaming.py`` replays speech in real time, so its figures move
with the machine's load. This script measures the pieces that decide them,
each independent of wall-clock pacing:

* ``cost``: one stream update (features, one batched decode of ``rows`` stream
  rows of ``--buffer_s`` of speech, greedy with timestamps) per ``audio_ctx``
  (encoder positions; none = the whole 30 s window): wall and process CPU time,
  the median of ``--repeats`` warm calls;
* ``clips``: WER of short clips (the corpus' sentences, one per row, 2-7 s)
  decoded whole-window and with the smallest ``audio_ctx`` bucket that holds
  each (:func:`whisper_t5x.longform.streaming.audio_ctx_for`): the accuracy cost
  of encoding less;
* ``replay``: streamed WER of the benchmark clip decoded by the streaming
  policy in *virtual* time: one stream gets ``--period_s`` of audio per update
  (the period a stream sees when each update costs that long), so the WER
  of a configuration does not depend on the CPU's other work.

    python benchmarks/streaming_levers.py --models tiny.en base --parts cost clips replay
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from benchmarks._speech_corpus import _synth_sentence, cache_dir, make_audio, sentences, wer  # noqa: E402
from _machine import cpu_name  # noqa: E402

SR = 16000


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cost(pipe, audio, buffer_s, rows, ctxs, repeats, alignments=("none",)):
    """Seconds (wall, CPU) of one update of ``rows`` stream rows per audio_ctx and word-time source
    (none; posthoc: a second forward; inline: read while decoding)."""
    import itertools

    from whisper_t5x.longform import stream_decode as sd
from whisper_t5x.longform import streaming as st

    prompt = tuple(pipe.tokenizer.encode(" the lighthouse keeper woke before dawn as he had done") * 4)[:32]
    out = []
    for ctx, alignment in itertools.product(ctxs, alignments):
        decode = sd.decoder_decode_fn(pipe.decoder, sd.stream_request(), audio_ctx=None if ctx is None else (ctx,),
                                      inline_alignment=alignment == "inline")
        for n in rows:
            batch = [st.StreamRow(audio[int(k * 0.7 * SR):int((k * 0.7 + buffer_s) * SR)], prompt, "en",
                                  alignment != "none") for k in range(n)]
            decode(batch)  # compile
            walls, cpus = [], []
            for _ in range(repeats):
                w0, c0 = time.perf_counter(), cpu_s()
                decode(batch)
                walls.append(time.perf_counter() - w0)
                cpus.append(cpu_s() - c0)
            r = dict(audio_ctx=ctx or 1500, word_times=alignment, rows=n, buffer_s=buffer_s, wall_s=round(float(np.median(walls)), 3),
                     cpu_s=round(float(np.median(cpus)), 3), load=round(os.getloadavg()[0], 2))
            print(json.dumps(r), flush=True)
            out.append(r)
    return out


def clips(pipe, count, buckets):
    """WER of ``count`` corpus sentences decoded one per row, whole-window vs with audio_ctx buckets."""
    from whisper_t5x.longform import stream_decode as sd
from whisper_t5x.longform import streaming as st

    texts = sentences()[:count]
    audios = [_synth_sentence(t, cache_dir()) for t in texts]
    reference = " ".join(texts)
    out = dict(clips=len(texts), seconds=round(sum(a.size for a in audios) / SR, 1), reference_words=len(reference.split()))
    for name, bk in (("whole", None), ("audio_ctx", buckets)):
        decode = sd.decoder_decode_fn(pipe.decoder, sd.stream_request(), audio_ctx=bk)
        hyp = []
        for lo in range(0, len(audios), 4):
            part = [st.StreamRow(a, (), "en") for a in audios[lo:lo + 4]]
            hyp.extend("".join(w.text for w in h.words) for h in decode(part))
        out[name] = round(wer(reference, " ".join(hyp)), 4)
        out[name + "_ctx"] = sorted({sd.audio_ctx_for(a.size, bk) or 1500 for a in audios})
    print(json.dumps(out), flush=True)
    return out


def replay(pipe, audio, reference, period_s, policy_name, buckets, inline=False, **policy_kwargs):
    """Streamed WER of one stream fed ``period_s`` of audio per update, in virtual time."""
    from whisper_t5x.longform import stream_decode as sd
from whisper_t5x.longform import streaming as st

    policy = st.make_policy(policy_name, **policy_kwargs)
    decode = sd.decoder_decode_fn(pipe.decoder, sd.stream_request(), audio_ctx=buckets, inline_alignment=inline)
    state = st.StreamState(language="en")
    step = int(period_s * SR)
    words, updates, c0 = [], 0, cpu_s()
    for fed in range(0, audio.size, step):
        state.append(audio[fed:fed + step])
        if policy.ready(state):
            words += st.step(policy, [state], decode)[0]
            updates += 1
    words += st.step(policy, [state], decode, final=True)[0]
    text = "".join(w.text for w in words).strip()
    r = dict(policy=policy_name, period_s=period_s, audio_ctx=list(buckets) if buckets else None, inline=inline,
             policy_kwargs=policy_kwargs, wer=round(wer(reference, text), 4), updates=updates + 1,
             cpu_s_per_update=round((cpu_s() - c0) / (updates + 1), 3), text=text[:160])
    print(json.dumps(r), flush=True)
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    p.add_argument("--parts", nargs="+", default=["cost", "clips", "replay"])
    p.add_argument("--buffer_s", type=float, default=6.0)
    p.add_argument("--rows", nargs="+", type=int, default=[1, 4])
    p.add_argument("--ctxs", nargs="+", default=["none", "250", "500", "750", "1000"])
    p.add_argument("--word_times", nargs="+", default=["none"], choices=["none", "posthoc", "inline"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--speech_end_s", type=float, default=25.6, help="replay audio cut here (0: whole clip)")
    p.add_argument("--periods", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    p.add_argument("--policies", nargs="+", default=["local_agreement"])
    p.add_argument("--alignment", nargs="+", default=["posthoc"], choices=["posthoc", "inline"])
    p.add_argument("--cut_search_s", nargs="+", type=float, default=[0.4])
    p.add_argument("--out", default=os.path.join(HERE, "results", "streaming_levers"))
    args = p.parse_args(argv)

    from whisper_t5x.longform.stream_decode import AUDIO_CTX_BUCKETS
    from whisper_t5x.pipeline import FlaxWhisperPipeline

    audio, reference = make_audio(args.seconds)
    if args.speech_end_s:
        audio = audio[:int(args.speech_end_s * SR)]  # no trailing silence: streams decode speech (server VAD)
    ctxs = [None if c == "none" else int(c) for c in args.ctxs]
    out = dict(cpu=cpu_name(), cores=os.cpu_count(), load_start=os.getloadavg()[0], buckets=list(AUDIO_CTX_BUCKETS),
               command=" ".join(["python", "benchmarks/streaming_levers.py", *(argv or sys.argv[1:])]), models={})
    for model in args.models:
        pipe = FlaxWhisperPipeline(model, batch_size=8)
        res = out["models"][model] = {}
        off = pipe.transcribe(audio).text
        res["offline_wer"] = round(wer(reference, off), 4)
        print(model, "offline WER", res["offline_wer"], flush=True)
        if "cost" in args.parts:
            res["cost"] = cost(pipe, audio, args.buffer_s, args.rows, ctxs, args.repeats, args.word_times)
        if "clips" in args.parts:
            res["clips"] = clips(pipe, args.clips, AUDIO_CTX_BUCKETS)
        if "replay" in args.parts:
            res["replay"] = [replay(pipe, audio, reference, period, policy, bk, al == "inline", cut_search_s=cs)
                             for policy in args.policies for period in args.periods
                             for bk in (None, AUDIO_CTX_BUCKETS) for cs in args.cut_search_s
                             for al in args.alignment]
        del pipe
    out["load_end"] = os.getloadavg()[0]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "models"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

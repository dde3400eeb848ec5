"""Live transcription: emission latency, final WER and real-time capacity of the stream scheduler.

For each model, policy and stream count, speech is replayed in real time
(wall-clock paced, ``--chunk_ms`` pieces; a piece is handed over when its
last sample "has been spoken") to N concurrent streams of one
:class:`~whisper_t5x.app.serving.streams.StreamScheduler` in this process (the
server's scheduler with its server VAD, over the model's
:class:`~whisper_t5x.longform.decoder.Decoder`: every stream due decoded in one
batch every ``--interval_ms``; the WebSocket layer adds JSON and base64 only).
Reported, per configuration:

* emission latency per word: the wall time a word was emitted (in a
  ``...transcription.delta`` event) minus the wall time its end was spoken,
  the end taken from the offline word-timestamp run of the same audio
  (``pipe(audio, return_timestamps="word")``); emitted words are matched to
  the offline words by a longest-common-subsequence alignment of their
  normalised forms; mean, p50, p90 over all streams;
* final WER of the streamed text (the items' completed transcripts) against
  the reference, next to the offline WER of the same model (``pipe.transcribe``);
* real time: the share of the wall time the scheduler spent decoding (``busy``;
  at 1.0 the backlog grows), the mean period between two updates of a stream,
  and how long after the end of the audio its last transcript came;
  the largest N with busy < 0.9 and no growing delay is "kept in real time";
* device time per update (one batched decode of all rows due) and per row, and the
  process's CPU time per update (both cores; what an update costs with the CPU to itself).

The CPU is shared with other work on some machines: the load average before
and after each configuration is recorded.

    python benchmarks/streaming.py --models tiny.en base --policies local_agreement alignatt --streams 1 2 4
    python benchmarks/streaming.py --models tiny.en --streams 1 --seconds 20   # quick look
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import os
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from benchmarks._speech_corpus import make_audio, normalize, wer  # noqa: E402

SR = 16000


from _machine import cpu_name  # noqa: E402


def offline(pipe, audio):
    """(text, [(normalised word, end seconds)]) of the offline run: plain transcript and word timestamps."""
    text = pipe.transcribe(audio).text
    out = pipe(audio, return_timestamps="word")
    words = []
    for chunk in out["chunks"]:
        end = chunk["timestamp"][1]
        for w in normalize(chunk["text"]):
            words.append((w, float(end)))
    return text, words


def warm(scheduler, pipe, max_rows, buckets=None):
    """Compile every batch bucket up to ``max_rows`` with each prompt length and audio_ctx bucket, word times
    included, and the VAD."""
    from whisper_t5x.longform.stream_decode import warmup_seconds
    from whisper_t5x.longform.streaming import PROMPT_LENGTHS, StreamRow

    lengths = warmup_seconds(buckets)
    tokens = tuple(pipe.tokenizer.encode(" warm up" * 40))
    size = 1
    while True:
        for n in (0,) + PROMPT_LENGTHS:
            for seconds in lengths:
                audio = (0.05 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * SR)) / SR)).astype(np.float32)
                scheduler.decode([StreamRow(audio, tokens[:n], "en", True)] * size)
        if size >= max_rows:
            break
        size = min(max_rows, size * 2)
    audio = (0.05 * np.sin(2 * np.pi * 220 * np.arange(2 * SR) / SR)).astype(np.float32)
    scheduler._vad_probabilities([audio] * max_rows)


def run(pipe, policy_name, n, audio, speech_end_s, interval_ms, chunk_ms, threshold_s, tail_s, warmed,
        buckets=None, cut_search_s=0.4, inline=False):
    from whisper_t5x.app.serving.streams import StreamScheduler, TurnDetection
    from whisper_t5x.longform.stream_decode import decoder_decode_fn, stream_request
    from whisper_t5x.longform.streaming import make_policy

    policy = make_policy(policy_name, threshold_s=threshold_s, cut_search_s=cut_search_s)
    sched = StreamScheduler(decoder_decode_fn(pipe.decoder, stream_request(), audio_ctx=buckets,
                                              inline_alignment=inline), policy,
                            interval_ms / 1000.0, max_streams=n, max_buffer_s=3600.0)
    if (n, buckets, inline) not in warmed:
        warm(sched, pipe, n, buckets)
        warmed.add((n, buckets, inline))
    events = [[] for _ in range(n)]
    streams = []
    for k in range(n):
        def emit(event, k=k):
            events[k].append((time.monotonic(), event))
        streams.append(sched.open(emit, language="en", turn_detection=TurnDetection()))
    chunk = int(chunk_ms * SR / 1000)
    padded = np.concatenate([audio, np.zeros(int(tail_s * SR), np.float32)])
    load_before = os.getloadavg()
    cpu_before = time.process_time()
    sched.start()
    t0 = time.monotonic()
    for i in range(0, padded.size, chunk):
        piece = padded[i:i + chunk]
        wait = t0 + (i + piece.size) / SR - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        for s in streams:
            s.append(piece)
    fed_end = time.monotonic()
    audio_end = t0 + speech_end_s

    def drained(stream, evs):  # every sample fed has been through the VAD and every item is complete
        detector = stream.detector
        return (any(e["type"].endswith("transcription.completed") for _, e in evs) and stream.item_id is None
                and stream.backlog_s < 0.05 and not stream.vad_ops
                and (detector is None or (detector.pending.size < 2 * 512 and not detector.speaking)))

    deadline = time.monotonic() + 300
    while not all(drained(s, e) for s, e in zip(streams, events)) and time.monotonic() < deadline:
        time.sleep(0.05)
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu_before
    sched.stop(timeout=120)  # an update in flight finishes (a thread left running aborts the interpreter at exit)
    for s in streams:
        s.close()
    load_after = os.getloadavg()
    times = list(sched.update_times)
    busy = sum(sec for _, sec in times) / max(1e-9, fed_end - t0)
    return dict(events=events, t0=t0, audio_end=audio_end, wall=wall, busy=busy, times=times, cpu=cpu,
                load=(load_before[0], load_after[0]), stats=dict(sched.stats))


def score(result, reference, offline_words):
    """Latencies of matched words, final texts and their WERs, per-stream update periods and end delays."""
    latencies, wers, periods, end_delays, texts = [], [], [], [], []
    ref_norm = [w for w, _ in offline_words]
    for evs in result["events"]:
        emitted = []
        for t, e in evs:
            if e["type"].endswith("transcription.delta"):
                emitted.extend((w, t) for w in normalize(e["delta"]))
        matcher = difflib.SequenceMatcher(None, [w for w, _ in emitted], ref_norm, autojunk=False)
        for a, b, size in matcher.get_matching_blocks():
            for j in range(size):
                latencies.append(emitted[a + j][1] - (result["t0"] + offline_words[b + j][1]))
        text = " ".join(e["transcript"] for _, e in evs if e["type"].endswith("transcription.completed"))
        texts.append(text)
        wers.append(wer(reference, text))
        deltas = [t for t, e in evs if e["type"].endswith("transcription.delta")]
        if len(deltas) > 1:
            periods.append(float(np.mean(np.diff(deltas))))
        done = [t for t, e in evs if e["type"].endswith("transcription.completed")]
        if done:
            end_delays.append(done[-1] - result["audio_end"])
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    rows = [r for r, _ in result["times"]]
    secs = [s for _, s in result["times"]]
    return dict(
        latency_mean_s=round(float(np.mean(lat)), 3), latency_p50_s=round(float(np.percentile(lat, 50)), 3),
        latency_p90_s=round(float(np.percentile(lat, 90)), 3), words_matched=len(latencies),
        words_offline=len(offline_words) * len(result["events"]),
        wer_streamed=round(float(np.mean(wers)), 4), wer_streams=[round(w, 4) for w in wers],
        busy=round(result["busy"], 3), end_delay_s=round(float(np.mean(end_delays)), 2) if end_delays else None,
        updates=len(secs), rows_per_update=round(float(np.mean(rows)), 2) if rows else 0,
        device_s_per_update=round(float(np.mean(secs)), 3) if secs else None,
        device_s_per_row=round(float(sum(secs) / max(1, sum(rows))), 3),
        cpu_s_per_update=round(result["cpu"] / max(1, len(secs)), 3),
        load_before=round(result["load"][0], 2), load_after=round(result["load"][1], 2), stats=result["stats"],
        text_sample=texts[0][:200] if texts else "",
    )


def real_time(r) -> bool:
    return r["busy"] < 0.9 and r["end_delay_s"] is not None and r["end_delay_s"] < 5.0


def markdown(out) -> str:
    lines = [f"# Live transcription ({out['cpu']}, {out['cores']} cores; interval {out['interval_ms']:g} ms, "
             f"{out['seconds']:g} s of speech per stream)", "",
             "| model | policy | audio_ctx | streams | latency mean / p50 / p90 (s) | WER streamed | WER offline | "
             "busy | s per update (rows) | CPU s per update | end delay (s) | load before/after |",
             "|---|---|---|---:|---|---:|---:|---:|---|---:|---:|---|"]
    for r in out["runs"]:
        ctx = "buckets" if r.get("audio_ctx") else "30 s"
        policy = r["policy"] + (" (inline)" if r.get("alignment") == "inline" else "")
        lines.append(
            f"| {r['model']} | {policy} | {ctx} | {r['streams']} | {r['latency_mean_s']:.2f}"
            f" / {r['latency_p50_s']:.2f}"
            f" / {r['latency_p90_s']:.2f} | {100 * r['wer_streamed']:.1f} % | {100 * r['wer_offline']:.1f} % | "
            f"{r['busy']:.2f} | {r['device_s_per_update']} ({r['rows_per_update']}) | {r.get('cpu_s_per_update')} | "
            f"{r['end_delay_s']} | "
            f"{r['load_before']} / {r['load_after']} |")
    lines.append("")
    for key, value in out["kept_in_real_time"].items():
        lines.append(f"- most concurrent streams kept in real time, {key}: {value}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    p.add_argument("--policies", nargs="+", default=["local_agreement", "alignatt"])
    p.add_argument("--streams", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=45.0, help="speech per stream")
    p.add_argument("--interval_ms", type=float, default=500.0)
    p.add_argument("--chunk_ms", type=float, default=100.0, help="audio handed over per append")
    p.add_argument("--threshold_s", type=float, default=0.5, help="AlignAtt's distance from the end")
    p.add_argument("--tail_s", type=float, default=1.5, help="silence after the speech (ends the last item)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--audio_ctx", nargs="+", default=["off"], choices=["off", "on"],
                   help="encode stream rows with the audio_ctx buckets (on), the whole window (off), or both")
    p.add_argument("--alignment", nargs="+", default=["posthoc"], choices=["posthoc", "inline"],
                   help="word times from a second forward (posthoc) or from the attention read while decoding")
    p.add_argument("--cut_search_s", type=float, default=0.4, help="cuts move to a pause within this distance")
    p.add_argument("--stop_when_behind", action="store_true", help="skip larger stream counts once one falls behind")
    p.add_argument("--out", default=os.path.join(HERE, "results", "streaming"))
    args = p.parse_args(argv)

    from whisper_t5x.longform.stream_decode import AUDIO_CTX_BUCKETS
    from whisper_t5x.pipeline import FlaxWhisperPipeline

    audio, reference = make_audio(args.seconds)
    out = dict(cpu=cpu_name(), cores=os.cpu_count(), interval_ms=args.interval_ms, chunk_ms=args.chunk_ms,
               seconds=args.seconds, threshold_s=args.threshold_s, cut_search_s=args.cut_search_s, runs=[],
               kept_in_real_time={},
               command=" ".join([os.path.basename(sys.executable), "benchmarks/streaming.py", *(argv or sys.argv[1:])]))
    for model in args.models:
        pipe = FlaxWhisperPipeline(model, batch_size=args.batch_size)
        off_text, off_words = offline(pipe, audio)
        off_wer = wer(reference, off_text)
        print(f"{model}: offline WER {100 * off_wer:.1f} %, {len(off_words)} timed words", flush=True)
        warmed = set()
        for policy, ctx, alignment in itertools.product(args.policies, args.audio_ctx, args.alignment):
            if True:
                buckets = AUDIO_CTX_BUCKETS if ctx == "on" else None
                best = 0
                for n in sorted(args.streams):
                    result = run(pipe, policy, n, audio, off_words[-1][1], args.interval_ms, args.chunk_ms,
                                 args.threshold_s, args.tail_s, warmed, buckets, args.cut_search_s,
                                 alignment == "inline")
                    r = dict(model=model, policy=policy, audio_ctx=list(buckets) if buckets else None,
                             alignment=alignment, streams=n, wer_offline=round(off_wer, 4),
                             **score(result, reference, off_words))
                    r["real_time"] = real_time(r)
                    out["runs"].append(r)
                    print(json.dumps(r), flush=True)
                    if r["real_time"]:
                        best = max(best, n)
                    elif args.stop_when_behind:
                        break
                out["kept_in_real_time"][f"{model} {policy} audio_ctx {ctx} {alignment}"] = best
        del pipe
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(out))
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

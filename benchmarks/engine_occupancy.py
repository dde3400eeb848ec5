"""Slot occupancy and wall time of VAD rows or chunked windows: the Decoder's batches vs the slot engine.

    python benchmarks/engine_occupancy.py --seconds 600 --model base [--slots 8 16] [--fallback] [--mode chunked]

Occupancy is the fraction of slot-steps doing useful work: a slot-step is one row of one decoding step
that the device computes; it is useful when its row is still decoding (its tokens and the end-of-text).
Before (``engine=False``): a batch of ``batch_size`` rows (the last one padded) steps until its longest
row ends, so slot-steps = rows x steps per batch (read from each batch's token counts). After: the
engine's own count (``last_stats``: ``engine_live_slot_steps / engine_slot_steps``, slot-steps over the
slots each generate call runs). The speech corpus is :mod:`_speech_corpus` (espeak-ng reading, as
``vad_options.py``); each configuration is warmed up on the first 90 s (compiles), then timed on the
whole clip. CPU s is the process's CPU time (every thread), the work done; wall times depend on the
machine's load (printed, a shared machine's wall times are noisy); occupancy depends on neither.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _speech_corpus as corpus  # noqa: E402


from _machine import cpu_name  # noqa: E402


class DecoderCounter:
    """Counts the Decoder's slot-steps by wrapping its result reader (each batch's token counts)."""

    def __init__(self, decoder):
        import numpy as np

        self.slot_steps = self.useful = self.batches = self.rows = 0
        original = decoder._rows

        def rows(output, prefix, count, temperature):
            import jax

            host = jax.device_get(output)
            num = np.asarray(host.num_tokens)
            cap = np.asarray(host.sequences).shape[1] - (1 + prefix)  # steps until max_length
            lived = np.minimum(num + 1, cap)  # the row's tokens and its end-of-text
            self.slot_steps += int(num.shape[0] * lived.max())
            self.useful += int(lived[:count].sum())
            self.batches += 1
            self.rows += count
            return original(host, prefix, count, temperature)

        decoder._rows = rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--model", default="base")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--slots", type=int, nargs="*", default=[8, 16], help="engine decode slots to measure")
    ap.add_argument("--refill_at", type=int, nargs="*", default=[4, 1],
                    help="free slots that trigger a refill (the engine's default: half the batch)")
    ap.add_argument("--fallback", action="store_true", help="temperature fallback on (default: greedy only)")
    ap.add_argument("--mode", choices=["vad", "chunked", "sequential"], default="vad",
                    help="long-form mode: VAD rows (the default), chunked 30 s windows (with continuations) or "
                         "the sequential seek (one chain of windows per input)")
    ap.add_argument("--inputs", type=int, default=1,
                    help="cut the corpus into this many inputs of equal length, transcribed in one call")
    ap.add_argument("--json", default=None, help="default: results/engine_occupancy[_chunked].json")
    args = ap.parse_args(argv)
    if args.json is None:
        suffix = ("" if args.mode == "vad" else f"_{args.mode}") + (f"_{args.inputs}" if args.inputs > 1 else "")
        args.json = os.path.join(HERE, "results", f"engine_occupancy{suffix}.json")
    from whisper_t5x import FlaxWhisperPipeline

    audio, text = corpus.make_audio(args.seconds)
    step = -(-audio.shape[0] // max(1, args.inputs))
    inputs = [audio[k:k + step] for k in range(0, audio.shape[0], step)] if args.inputs > 1 else audio
    kwargs = dict(language="en", task="transcribe", progress=False, long_form=args.mode)
    configs = [("Decoder (batches)", dict(engine=False))] + [
        (f"engine, {s} slots, refill at {r} free", dict(decode_slots=s, refill_at=r))
        for s in args.slots for r in args.refill_at]
    results, texts = [], {}
    model = None
    for name, extra in configs:
        extra = dict(extra)
        refill_at = extra.pop("refill_at", None)
        pipe = FlaxWhisperPipeline(model or args.model, batch_size=args.batch_size, fallback=args.fallback, **extra)
        if refill_at is not None:
            pipe.engine.refill_at = refill_at
        model = (pipe.model, pipe.decoder.params)
        counter = DecoderCounter(pipe.decoder) if not extra.get("engine", True) else None
        pipe([x[:90 * 16000] for x in inputs] if args.inputs > 1 else audio[:90 * 16000], **kwargs)  # compiles
        if counter is not None:
            counter.slot_steps = counter.useful = counter.batches = counter.rows = 0
        load = os.getloadavg()[0]
        t, cpu0 = time.perf_counter(), time.process_time()
        out = pipe(inputs, **kwargs)
        out = {"text": "".join(o["text"] for o in out)} if isinstance(out, list) else out
        wall, cpu_s = time.perf_counter() - t, time.process_time() - cpu0
        st = pipe.last_stats
        if counter is not None:
            total, useful = counter.slot_steps, counter.useful
        else:
            total, useful = st.get("engine_slot_steps", 0), st.get("engine_live_slot_steps", 0)
        texts[name] = out["text"]
        rows = st.get("rows") if args.mode == "vad" else st.get("windows")
        if rows is None:  # sequential: windows decoded (fallback draws excluded)
            rows = counter.rows if counter is not None else st.get("engine_insert_rows", 0) - st.get("fallback_decodes", 0)
        row = dict(config=name, wall_s=round(wall, 2), cpu_s=round(cpu_s, 2), rows=rows, slot_steps=total,
                   useful_slot_steps=useful,
                   occupancy=round(useful / max(1, total), 4), wer=round(corpus.wer(text, out["text"]), 4),
                   fallback_decodes=st.get("fallback_decodes", 0), loadavg=round(load, 1),
                   generate_calls=st.get("engine_generate_calls"), inserts=st.get("engine_inserts"),
                   moves=st.get("engine_moves"),
                   programs=None if pipe.engine is None or counter is not None else pipe.engine.num_programs,
                   same_text_as_decoder=out["text"] == texts[configs[0][0]])
        results.append(row)
        print(row, flush=True)
        del pipe
    cpu = cpu_name()
    what = {"vad": "VAD rows (default mode)", "chunked": "chunked windows (30 s, continuations included)",
            "sequential": "sequential seek"}[args.mode]
    if args.inputs > 1:
        what += f", {len(inputs)} inputs"
    header = (f"{args.model}, {args.seconds:.0f} s speech corpus, {what}, batch {args.batch_size}, "
              f"{'fallback on' if args.fallback else 'greedy, no fallback'}, language en; CPU: {cpu}, "
              f"{os.cpu_count()} cores")
    print("\n" + header + "\n")
    print("| decoding | rows | slot-steps | useful | occupancy | CPU s | wall s | WER % | same text | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        print(f"| {r['config']} | {r['rows']} | {r['slot_steps']} | {r['useful_slot_steps']} | "
              f"{100 * r['occupancy']:.1f}% | {r['cpu_s']:.1f} | {r['wall_s']:.1f} | {100 * r['wer']:.2f} | "
              f"{'yes' if r['same_text_as_decoder'] else 'no'} | {r['loadavg']:.1f} |")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(cpu=cpu, cores=os.cpu_count(), model=args.model, seconds=args.seconds, mode=args.mode,
                       inputs=args.inputs,
                       batch_size=args.batch_size, fallback=args.fallback, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prompted requests (``prompt_ids``) on the slot engine vs the Decoder, in one process, one run.

Two parts, each comparing the modes round by round (interleaved, so the machine's load hits them alike):

* ``pipeline``: ``--inputs`` clips transcribed in one pipeline call (default mode: VAD rows) with one
  prompt, by a pipeline whose VAD rows decode on the engine vs one with ``engine=False`` (the Decoder's
  batches: what prompted VAD rows got before they reached the engine);
* ``server``: the server's batcher (in process, no HTTP), ``--clients`` concurrent clients sending
  ``--requests`` requests back to back, each client with ITS OWN prompt (different ``prompt_ids``: the
  grouped path cannot put them in one pipeline call). Modes: ``decoder`` (grouped path, a pipeline
  without engine: the behaviour before prompted requests reached the engine), ``grouped`` (grouped path,
  the pipeline's VAD rows on the engine), ``engine`` (the engine path: each request's rows join the one
  running engine call, each row with its request's prompt).

Reports wall and process CPU seconds (``time.process_time``: this process's CPU, all its threads), requests
per minute and latency p50/p90 (server), WER against the espeak-ng references, whether each mode's texts
equal the first mode's, the load average and the CPU model. Files: ``samples/jfk.flac`` and espeak-ng clips
of ``--clip_seconds`` (:mod:`benchmarks._speech_corpus`).

    python benchmarks/prompted_requests.py --model tiny.en --parts pipeline server --rounds 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

SAMPLE = os.path.join(HERE, "..", "samples", "jfk.flac")

# One prompt per client: vocabulary lists and style hints, as users send them.
PROMPTS = (
    " Glossary: lighthouse, harbour, keeper, logbook.",
    " The following is a story read aloud.",
    " Names: Kennedy, Americans. Punctuate carefully.",
    " A talk about a small town by the sea.",
    " Transcript of a radio programme.",
    " Words: museum, brass lamp, granddaughter.",
    " Um, so, this is a recording.",
    " Chapter one.",
)


def _files(clip_seconds):
    """[(name, 16 kHz audio, seconds, reference text)]: jfk and espeak-ng clips."""
    import _speech_corpus  # noqa: E402

    from whisper_t5x.audio.loading import load_audio

    jfk = load_audio(SAMPLE)
    ref = open(os.path.join(HERE, "..", "samples", "jfk.txt"), encoding="utf-8").read().strip()
    out = [("jfk.flac", jfk, jfk.shape[0] / 16000, ref)]
    for sec in clip_seconds:
        audio, text = _speech_corpus.make_audio(sec)
        out.append((f"espeak_{sec:g}s", audio, float(sec), text))
    return out


def _timed(fn):
    cpu, start = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


# ---------------------------------------------------------------------- the pipeline
def pipeline_part(pipes, files, prompt_ids, rounds, inputs):
    """One call of ``inputs`` clips per mode and round; medians over rounds (a warm call first)."""
    from _speech_corpus import wer  # noqa: E402

    chosen = [files[k % len(files)] for k in range(inputs)]
    audio = [f[1] for f in chosen]
    kwargs = dict(generate_kwargs={"prompt_ids": list(prompt_ids)})
    timings = {m: [] for m in pipes}
    texts, stats = {}, {}
    for m, pipe in pipes.items():  # untimed: compiles
        pipe(audio, **kwargs)
    for _ in range(rounds):
        for m, pipe in pipes.items():
            out, wall, cpu = _timed(lambda: pipe(audio, **kwargs))
            timings[m].append((wall, cpu))
            texts[m] = [o["text"] for o in out]
            stats[m] = {k: v for k, v in pipe.last_stats.items() if k in ("rows", "engine_insert_rows",
                                                                          "engine_generate_calls", "fallback_decodes")}
    first = next(iter(pipes))
    rows = []
    for m in pipes:
        rows.append(dict(mode=m, wall_s=round(statistics.median(w for w, _ in timings[m]), 2),
                         cpu_s=round(statistics.median(c for _, c in timings[m]), 2),
                         walls=[round(w, 2) for w, _ in timings[m]], cpus=[round(c, 2) for _, c in timings[m]],
                         wer=round(100 * wer(" ".join(f[3] for f in chosen), " ".join(texts[m])), 2),
                         same_text_as_first=texts[m] == texts[first], stats=stats[m]))
    return dict(inputs=[f[0] for f in chosen], audio_s=round(sum(f[2] for f in chosen), 1), rows=rows)


# ---------------------------------------------------------------------- the server's batcher
def _server_round(batcher, files, prompts, clients, requests, options):
    """``clients`` threads, client c with prompt c, sending ``requests`` requests (client c starts at file c)."""
    from whisper_t5x.app.serving.batcher import DecodeOptions

    def client(c):
        out = []
        opts = DecodeOptions(**dict(options, prompt_ids=prompts[c % len(prompts)]))
        for r in range(requests):
            name, data, dur, _ = files[(c + r) % len(files)]
            t = time.perf_counter()
            try:
                res = batcher.submit(data, opts).result(timeout=1800)
                out.append(((name, c % len(prompts)), dur, time.perf_counter() - t, res.text, None))
            except Exception as e:  # noqa: BLE001
                out.append(((name, c % len(prompts)), dur, time.perf_counter() - t, None, f"{type(e).__name__}: {e}"))
        return out

    with concurrent.futures.ThreadPoolExecutor(clients) as ex:
        results, wall, cpu = _timed(lambda: [x for chunk in ex.map(client, range(clients)) for x in chunk])
    latencies = sorted(lat for _, _, lat, _, err in results if err is None)
    texts = {key: text for key, _, _, text, err in results if err is None}
    p90 = latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))] if latencies else None
    return dict(wall_s=wall, cpu_s=cpu, requests=len(results), errors=[e for *_, e in results if e],
                latency_p50_s=statistics.median(latencies) if latencies else None, latency_p90_s=p90,
                audio_s=sum(d for _, d, _, _, err in results if err is None)), texts


def server_part(pipes, files, prompts, args):
    from whisper_t5x.app.serving.batcher import Batcher

    options = {} if args.temperature is None else {"temperature": args.temperature}
    modes = {"decoder": (pipes["decoder"], False), "grouped": (pipes["engine"], False),
             "engine": (pipes["engine"], True)}
    modes = {m: modes[m] for m in args.server_modes}
    runs = {m: [] for m in modes}
    texts, counters = {}, {}
    for rnd in range(args.rounds + 1):  # round 0: untimed, compiles
        for m, (pipe, engine) in modes.items():
            b = Batcher(pipe, max_batch_size=args.batch_size, max_delay_s=args.max_batch_delay_ms / 1000.0,
                        engine=engine)
            try:
                row, texts[m] = _server_round(b, files, prompts, args.clients, args.requests, options)
            finally:
                b.stop()
            if rnd:
                runs[m].append(row)
                counters[m] = {k: b.stats.get(k, 0) for k in ("groups", "engine_calls", "engine_joined",
                                                               "engine_requests")}
            print(f"server {m} round {rnd}: wall {row['wall_s']:.1f} s, CPU {row['cpu_s']:.1f} s, "
                  f"p50 {row['latency_p50_s']}, errors {len(row['errors'])}", file=sys.stderr, flush=True)
    first = next(iter(modes))
    rows = []
    for m in modes:
        med = lambda k: round(statistics.median(r[k] for r in runs[m]), 2)  # noqa: E731
        requests = runs[m][0]["requests"]
        rows.append(dict(mode=m, wall_s=med("wall_s"), cpu_s=med("cpu_s"), latency_p50_s=med("latency_p50_s"),
                         latency_p90_s=med("latency_p90_s"),
                         requests_per_min=round(60 * requests / statistics.median(r["wall_s"] for r in runs[m]), 2),
                         walls=[round(r["wall_s"], 2) for r in runs[m]], errors=sum(len(r["errors"]) for r in runs[m]),
                         same_text_as_first=texts[m] == texts[first],
                         differing=sorted(f"{k[0]} prompt {k[1]}" for k in texts[first]
                                          if texts[m].get(k) != texts[first][k]),
                         counters=counters[m]))
    return dict(clients=args.clients, requests_per_client=args.requests, rows=rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--parts", nargs="+", default=["pipeline", "server"], choices=["pipeline", "server"])
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per mode (after an untimed one)")
    p.add_argument("--inputs", type=int, default=4, help="clips in the pipeline part's call")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=2, help="requests per client per server round")
    p.add_argument("--clip_seconds", type=float, nargs="+", default=[30, 60])
    p.add_argument("--temperature", type=float, default=None, help="None: the fallback schedule (server default)")
    p.add_argument("--max_batch_delay_ms", type=float, default=20.0)
    p.add_argument("--server_modes", nargs="+", default=["decoder", "grouped", "engine"],
                   choices=["decoder", "grouped", "engine"])
    p.add_argument("--out", default=os.path.join(HERE, "results", "prompted_requests.json"))
    args = p.parse_args(argv)

    from _machine import cpu_name  # noqa: E402

    from whisper_t5x import FlaxWhisperPipeline

    load_before = list(os.getloadavg())
    files = _files(args.clip_seconds)
    engine = FlaxWhisperPipeline(args.model, batch_size=args.batch_size)
    decoder = FlaxWhisperPipeline((engine.model, engine.decoder.params), batch_size=args.batch_size, engine=False)
    pipes = {"engine": engine, "decoder": decoder}
    prompts = [tuple(engine.tokenizer.encode(t)) for t in PROMPTS[:max(1, args.clients)]]
    result = dict(model=args.model, batch_size=args.batch_size, decode_slots=engine.engine.slots,
                  files=[(n, round(d, 1)) for n, _, d, _ in files], prompts=list(PROMPTS[:len(prompts)]),
                  temperature=args.temperature, cpu=cpu_name(), cpu_count=os.cpu_count(),
                  platform=platform.platform(), load_average_before=load_before,
                  command=" ".join(["python", "benchmarks/prompted_requests.py"] + list(argv or sys.argv[1:])))
    if "pipeline" in args.parts:
        result["pipeline"] = pipeline_part({"decoder": decoder, "engine": engine}, files, prompts[0], args.rounds,
                                           args.inputs)
    if "server" in args.parts:
        result["server"] = server_part(pipes, files, prompts, args)
    result["load_average_after"] = list(os.getloadavg())
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    lines = [f"Prompted requests: {args.model}, batch {args.batch_size}, files "
             + ", ".join(f"{n} ({d:g} s)" for n, d in result["files"]),
             f"CPU {result['cpu']} ({result['cpu_count']} cores), load average before {load_before[0]:.2f}, "
             f"after {result['load_average_after'][0]:.2f}", ""]
    if "pipeline" in result:
        pp = result["pipeline"]
        lines += [f"Pipeline, one call of {len(pp['inputs'])} clips ({pp['audio_s']} s), one prompt, median of "
                  f"{args.rounds}:", "", "| VAD rows on | wall s | CPU s | WER % | same text | stats |",
                  "|---|---:|---:|---:|---|---|"]
        lines += [f"| {r['mode']} | {r['wall_s']} | {r['cpu_s']} | {r['wer']} | {r['same_text_as_first']} "
                  f"| {r['stats']} |" for r in pp["rows"]]
        lines.append("")
    if "server" in result:
        sv = result["server"]
        lines += [f"Server batcher, {sv['clients']} clients x {sv['requests_per_client']} requests, each client its "
                  f"own prompt, median of {args.rounds}:", "",
                  "| path | requests / min | p50 s | p90 s | wall s | CPU s | same text | errors | counters |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---|"]
        lines += [f"| {r['mode']} | {r['requests_per_min']} | {r['latency_p50_s']} | {r['latency_p90_s']} "
                  f"| {r['wall_s']} | {r['cpu_s']} | {r['same_text_as_first']} | {r['errors']} | {r['counters']} |"
                  for r in sv["rows"]]
    table = "\n".join(lines)
    print(table)
    with open(os.path.splitext(args.out)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()

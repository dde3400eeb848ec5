"""REST throughput of the endpoint: audio seconds transcribed per wall second at 1, 4 and 8 clients.

Starts ``python -m whisper_t5x.app.serving`` on a free local port (or uses
``--url``), waits for ``/health`` (warm-up compiled), then for each client
count runs that many concurrent clients, each posting ``--requests`` files to
``/v1/audio/transcriptions`` back to back (files taken round-robin from
``--audio``; default ``samples/jfk.flac``). One untimed round per client count
comes first, so every batch shape is compiled before timing. Reports audio
seconds per wall second, speed-up over one client, request latency (median and
p90), how the server batched (requests and windows per pipeline call) and how
busy its batcher was (share of the wall time spent in pipeline calls: near 1
means the clients kept the server saturated). Writes a markdown table to
stdout and JSON to ``--out``.

``--window_cost`` (default on) then measures, in this process with the server
stopped, the pipeline's cost per window at batch 1 and at ``--batch_size``
(the first file repeated): the best speed-up cross-request batching can bring
on this device.

    python benchmarks/serving_throughput.py --model tiny.en --clients 1 4 8 --requests 3
    python benchmarks/serving_throughput.py --url http://127.0.0.1:8000 --api_key KEY

``--engine_compare`` measures instead, in this process, the server's batcher with the
engine path off (every request in grouped pipeline calls) and on (each request's
VAD rows join the one running engine call), on one pipeline, in one run: ``--clients``
concurrent clients (default 8) each send ``--requests`` requests back to back, files
taken round-robin from a MIXED set (``samples/jfk.flac`` and espeak-ng clips of
``--clip_seconds``, :mod:`benchmarks._speech_corpus`), each client starting at a
different file. An untimed round per mode compiles first. Reports requests per
minute, latency p50/p90, audio seconds per wall second, process CPU seconds, and
whether each file's text is the same in both modes. HTTP is not in this
measurement (the REST mode above measures the endpoint itself).

    python benchmarks/serving_throughput.py --engine_compare --model tiny.en --requests 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from tests._server_helpers import ServerProcess, get_json  # noqa: E402

SAMPLE = os.path.join(HERE, "..", "samples", "jfk.flac")


def duration_s(path: str) -> float:
    from whisper_t5x.audio.loading import get_duration

    return get_duration(path)


def run_clients(url, files, clients, requests, api_key, timeout):
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    latencies, audio, errors = [], 0.0, []

    def client(c):
        out = []
        with httpx.Client(timeout=timeout) as http:
            for r in range(requests):
                name, data, dur = files[(c * requests + r) % len(files)]
                t = time.perf_counter()
                resp = http.post(url + "/v1/audio/transcriptions", files={"file": (name, data)},
                                 data={"model": "whisper-1", "response_format": "json"}, headers=headers)
                out.append((resp.status_code, time.perf_counter() - t, dur, resp.text[:200]))
        return out

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as ex:
        results = [x for chunk in ex.map(client, range(clients)) for x in chunk]
    wall = time.perf_counter() - start
    for status, lat, dur, body in results:
        if status == 200:
            latencies.append(lat)
            audio += dur
        else:
            errors.append(f"{status}: {body}")
    return wall, audio, latencies, errors


def window_cost(model, batch_size, dtype, path, reps=3):
    """Seconds per window of the pipeline at batch 1 and ``batch_size`` (best of ``reps`` calls, compiled first)."""
    from whisper_t5x.audio.loading import load_audio
    from whisper_t5x.app.config import ModelSection, PartitionSection, ServeConfig
    from whisper_t5x.app.serving.service import _build_pipeline

    settings = ServeConfig(model=ModelSection(name=model, dtype=dtype or "float32"),
                           partition=PartitionSection(batch_size=batch_size))
    pipe = _build_pipeline(settings)
    audio = load_audio(path)
    out = {}
    for b in sorted({1, batch_size}):
        call = lambda: pipe([audio] * b, batch_size=batch_size, generate_kwargs={"temperature": 0.0})  # noqa: E731
        call()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        out[f"batch_{b}"] = dict(call_s=round(min(times), 3), per_window_s=round(min(times) / b, 3),
                                 calls_s=[round(x, 3) for x in times])
    first, last = out["batch_1"]["per_window_s"], out[f"batch_{batch_size}"]["per_window_s"]
    out["batching_gain"] = round(first / last, 2) if last else None
    return out


def _percentile(values, q):
    values = sorted(values)
    return values[max(0, math.ceil(q * len(values)) - 1)] if values else None


def _mixed_audio(clip_seconds):
    """[(name, 16 kHz audio, duration s, reference text)]: jfk and espeak-ng clips of ``clip_seconds``."""
    from whisper_t5x.audio.loading import load_audio

    sys.path.insert(0, HERE)
    import _speech_corpus  # noqa: E402

    jfk = load_audio(SAMPLE)
    ref = open(os.path.join(HERE, "..", "samples", "jfk.txt"), encoding="utf-8").read().strip()
    out = [("jfk.flac", jfk, jfk.shape[0] / 16000, ref)]
    for sec in clip_seconds:
        audio, text = _speech_corpus.make_audio(sec)
        out.append((f"espeak_{sec:g}s", audio, sec, text))
    return out


def _engine_round(batcher, files, clients, requests, options):
    """``clients`` threads, each sending ``requests`` requests back to back; client c starts at file c."""
    latencies, texts, errors, audio, per_file = [], {}, [], 0.0, {}

    def client(c):
        out = []
        for r in range(requests):
            name, data, dur, _ = files[(c + r) % len(files)]
            t = time.perf_counter()
            try:
                res = batcher.submit(data, options).result(timeout=900)
                out.append((name, dur, time.perf_counter() - t, res.text, None))
            except Exception as e:  # noqa: BLE001
                out.append((name, dur, time.perf_counter() - t, None, f"{type(e).__name__}: {e}"))
        return out

    cpu, start = time.process_time(), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as ex:
        results = [x for chunk in ex.map(client, range(clients)) for x in chunk]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    for name, dur, lat, text, err in results:
        if err is None:
            latencies.append(lat)
            audio += dur
            texts.setdefault(name, set()).add(text)
            per_file.setdefault(name, []).append(lat)
        else:
            errors.append(err)
    return dict(wall_s=round(wall, 2), cpu_s=round(cpu, 2), requests=len(results), errors=len(errors),
                requests_per_min=round(60 * len(latencies) / wall, 2) if wall else None,
                latency_p50_s=round(statistics.median(latencies), 2) if latencies else None,
                latency_p90_s=round(_percentile(latencies, 0.9), 2) if latencies else None,
                latency_max_s=round(max(latencies), 2) if latencies else None,
                audio_s=round(audio, 1), audio_s_per_s=round(audio / wall, 2) if wall else None,
                latency_mean_per_file_s={n: round(statistics.mean(v), 2) for n, v in per_file.items()},
                first_errors=errors[:3]), texts


def _arrival(batcher, long, short, options, delay_s):
    """Latency of ``short`` submitted ``delay_s`` after ``long`` (the batch in flight), and of ``long``."""
    t0 = time.perf_counter()
    first = batcher.submit(long[1], options)
    time.sleep(delay_s)
    t1 = time.perf_counter()
    second = batcher.submit(short[1], options)
    second.result(timeout=900)
    short_s = time.perf_counter() - t1
    first.result(timeout=900)
    return dict(long_s=round(time.perf_counter() - t0, 2), short_s=round(short_s, 2))


def engine_compare(args):
    """The batcher with the engine path off, then on, on one pipeline (see the module docstring)."""
    sys.path.insert(0, HERE)
    from _machine import cpu_name  # noqa: E402
    from _speech_corpus import wer  # noqa: E402

    from whisper_t5x import FlaxWhisperPipeline
    from whisper_t5x.app.serving.batcher import Batcher, DecodeOptions

    load_before = list(os.getloadavg())
    files = _mixed_audio(args.clip_seconds)
    pipe = FlaxWhisperPipeline(args.model, batch_size=args.batch_size, **({"dtype": args.dtype} if args.dtype else {}))
    options = DecodeOptions()  # the server's default: the fallback schedule, no timestamps
    clients = max(args.clients)  # default 8
    rows, texts = [], {}
    longest = max(files, key=lambda f: f[2])
    for mode in args.modes:
        b = Batcher(pipe, max_batch_size=args.batch_size, max_delay_s=args.max_batch_delay_ms / 1000.0,
                    engine=mode != "off", announce=False, row_order="fifo" if mode == "fifo" else "round_robin")
        default_steps = pipe.engine.steps_per_call
        if mode == "on16":
            pipe.engine.steps_per_call = 16  # a runtime argument of the generate program: nothing compiles
        try:
            if not args.no_warm_round:
                _engine_round(b, files, clients, 1, options)
            before, engine_before = dict(b.stats), dict(pipe.engine.stats)
            row, texts[mode] = _engine_round(b, files, clients, args.requests, options)
            stats = {k: v - before.get(k, 0) for k, v in b.stats.items()}
            steps = {k: v - engine_before.get(k, 0) for k, v in pipe.engine.stats.items()}
            arrivals = [_arrival(b, longest, files[0], options, args.arrival_delay_s) for _ in range(args.arrivals)]
        finally:
            b.stop()
            pipe.engine.steps_per_call = default_steps
        row.update(engine=mode, pipeline_calls=stats.get("groups", 0), engine_calls=stats.get("engine_calls", 0),
                   engine_joined=stats.get("engine_joined", 0),
                   slot_occupancy=round(steps.get("engine_live_slot_steps", 0) / steps["engine_slot_steps"], 3)
                   if steps.get("engine_slot_steps") else None,
                   padding_rows=steps.get("padding_rows", 0), arrivals=arrivals,
                   wer={n: round(100 * wer(ref, next(iter(texts[mode].get(n, {""})))), 1)
                        for n, _, _, ref in files})
        rows.append(row)
        print(f"engine {mode}: {row['requests_per_min']} req/min, p50 {row['latency_p50_s']} s, "
              f"p90 {row['latency_p90_s']} s", file=sys.stderr, flush=True)
    base = args.modes[0]  # each mode's texts against the first mode's (file by file)
    same = {m: {n: texts[m].get(n) == texts[base].get(n) for n in texts[base]} for m in args.modes[1:]}
    meta = dict(model=args.model, batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay_ms,
                clients=clients, requests_per_client=args.requests, decode_slots=pipe.engine.slots,
                files=[(n, round(d, 1)) for n, _, d, _ in files], cpu=cpu_name(), cpu_count=os.cpu_count(),
                platform=platform.platform(), load_average_before=load_before,
                load_average_after=list(os.getloadavg()), same_text_per_file=same,
                command=" ".join(["python", "benchmarks/serving_throughput.py"] + list(args.argv)))
    lines = [f"Server batcher, engine path off vs on: {args.model}, batch {args.batch_size}, "
             f"{clients} concurrent clients x {args.requests} requests, files "
             + ", ".join(f"{n} ({d:g} s)" for n, d in meta["files"]),
             f"CPU {meta['cpu']} ({os.cpu_count()} cores), load average before {load_before[0]:.2f}, "
             f"after {meta['load_average_after'][0]:.2f}", "",
             "| engine path | requests / min | latency p50 (s) | latency p90 (s) | audio s / wall s | CPU s | wall s "
             "| slot occupancy | pipeline calls | engine calls | joined | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['requests_per_min']} | {r['latency_p50_s']} | {r['latency_p90_s']} "
                     f"| {r['audio_s_per_s']} | {r['cpu_s']} | {r['wall_s']} | {r['slot_occupancy']} "
                     f"| {r['pipeline_calls']} | {r['engine_calls']} | {r['engine_joined']} | {r['errors']} |")
    lines += ["", "mean latency per file (s): "
              + "; ".join(f"{r['engine']}: " + ", ".join(f"{n} {v}" for n, v in r["latency_mean_per_file_s"].items())
                          for r in rows),
              "", f"a request arriving {args.arrival_delay_s:g} s into another's call ({files[0][0]} after "
              f"{longest[0]}, alone otherwise; short / long latency in s, {args.arrivals} tries): "
              + "; ".join(f"{r['engine']}: " + ", ".join(f"{a['short_s']} / {a['long_s']}" for a in r["arrivals"])
                          for r in rows)]
    for m, by_file in same.items():
        lines += ["", f"same text as {base} ({m}): " + ", ".join(f"{n} {'yes' if v else 'NO'}"
                                                              for n, v in by_file.items())]
    print("\n".join(lines))
    if args.out:
        base = os.path.splitext(args.out)[0]
        os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
        with open(base + ".json", "w", encoding="utf-8") as f:
            json.dump(dict(meta, results=rows), f, indent=2)
            f.write("\n")
        with open(base + ".md", "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"\nwrote {base}.json, {base}.md")
    return 0 if rows and all(r["errors"] == 0 for r in rows) else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an already running server (default: start one)")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_batch_delay_ms", type=float, default=20.0)
    p.add_argument("--dtype", default=None)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--requests", type=int, default=3, help="requests per client per timed round")
    p.add_argument("--audio", nargs="+", default=[SAMPLE])
    p.add_argument("--api_key", default=None)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--no_warm_round", action="store_true", help="skip the untimed round per client count")
    p.add_argument("--no_window_cost", dest="window_cost", action="store_false",
                   help="skip measuring the per-window cost at batch 1 and --batch_size")
    p.add_argument("--out", default=None, help="default results/serving_throughput.json "
                   "(--engine_compare: results/serving_throughput_engine.{json,md})")
    p.add_argument("--engine_compare", action="store_true", help="in-process batcher, engine path off vs on")
    p.add_argument("--modes", nargs="+", default=["off", "on", "fifo"], choices=["off", "on", "fifo", "on16"],
                   help="engine path off, on (rows round-robin), on with the oldest request's rows first, on with "
                   "16 steps per generate call instead of the engine's default (rows join sooner)")
    p.add_argument("--arrival_delay_s", type=float, default=2.0)
    p.add_argument("--arrivals", type=int, default=2, help="tries of the arrival scenario per mode")
    p.add_argument("--clip_seconds", type=float, nargs="+", default=[30, 45, 60, 90],
                   help="espeak-ng clip lengths mixed with jfk (--engine_compare)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.engine_compare:
        args.out = args.out or os.path.join(HERE, "results", "serving_throughput_engine.json")
        return engine_compare(args)
    args.out = args.out or os.path.join(HERE, "results", "serving_throughput.json")
    load_before = list(os.getloadavg())

    files = [(os.path.basename(f), open(f, "rb").read(), duration_s(f)) for f in args.audio]
    server = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        extra = ["--dtype", args.dtype] if args.dtype else []
        server = ServerProcess(["--model", args.model, "--batch_size", str(args.batch_size), "--max_batch_delay_ms",
                                str(args.max_batch_delay_ms), "--no_ui", "--log_level", "warning", *extra])
        url = server.url
    rows = []
    try:
        t = time.perf_counter()
        if server is not None:
            server.wait_ready(timeout=900)
        ready_s = time.perf_counter() - t
        health = get_json(url + "/health")[1] or {}
        for n in args.clients:
            if not args.no_warm_round:
                run_clients(url, files, n, 1, args.api_key, args.timeout)
            before = (get_json(url + "/health")[1] or {}).get("batches", {})
            wall, audio, lat, errors = run_clients(url, files, n, args.requests, args.api_key, args.timeout)
            after = (get_json(url + "/health")[1] or {}).get("batches", {})
            groups = after.get("groups", 0) - before.get("groups", 0)
            reqs = after.get("requests", 0) - before.get("requests", 0)
            wins = after.get("windows", 0) - before.get("windows", 0)
            busy = (after.get("busy_ms", 0) - before.get("busy_ms", 0)) / 1000.0
            rows.append(dict(
                clients=n, requests=len(lat) + len(errors), errors=len(errors), wall_s=round(wall, 3),
                audio_s=round(audio, 3), audio_s_per_s=round(audio / wall, 3) if wall else None,
                latency_p50_s=round(statistics.median(lat), 3) if lat else None,
                latency_p90_s=round(sorted(lat)[max(0, math.ceil(0.9 * len(lat)) - 1)], 3) if lat else None,
                requests_per_batch=round(reqs / groups, 2) if groups else None,
                windows_per_batch=round(wins / groups, 2) if groups else None,
                batcher_busy=round(min(1.0, busy / wall), 3) if wall and "busy_ms" in after else None,
                first_errors=errors[:3],
            ))
            print(f"{n} client(s): {rows[-1]['audio_s_per_s']} audio s/s", file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.stop()

    cost = None
    if args.window_cost and not args.url:
        cost = window_cost(args.model, args.batch_size, args.dtype, args.audio[0])
        print(f"per-window cost: {cost}", file=sys.stderr, flush=True)
    base = rows[0]["audio_s_per_s"] if rows and rows[0]["audio_s_per_s"] else None
    for r in rows:
        r["speedup_vs_first"] = round(r["audio_s_per_s"] / base, 2) if base and r["audio_s_per_s"] else None
    try:
        import jax

        device = f"{jax.default_backend()}: {jax.devices()[0].device_kind} x{jax.device_count()}"
    except Exception:  # noqa: BLE001
        device = "unknown"
    meta = dict(model=args.model if not args.url else health.get("model"), batch_size=args.batch_size,
                max_batch_delay_ms=args.max_batch_delay_ms, audio=[f[0] for f in files],
                audio_durations_s=[round(f[2], 3) for f in files], requests_per_client=args.requests,
                device=device, cpu_count=os.cpu_count(), platform=platform.platform(),
                server_ready_s=round(ready_s, 1), warmup_s=health.get("warmup_s"),
                command=" ".join([os.path.basename(sys.executable), "benchmarks/serving_throughput.py"]
                                 + list(sys.argv[1:] if argv is None else argv)))
    print(f"\nREST throughput, {meta['model']} (batch {args.batch_size}, delay {args.max_batch_delay_ms:g} ms), "
          f"{device}, {os.cpu_count()} CPU cores\n")
    print("| clients | requests | audio s / wall s | speed-up | latency p50 (s) | latency p90 (s) | requests / batch "
          "| batcher busy | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['audio_s_per_s']} | {r['speedup_vs_first']} | "
              f"{r['latency_p50_s']} | {r['latency_p90_s']} | {r['requests_per_batch']} | {r['batcher_busy']} "
              f"| {r['errors']} |")
    if cost:
        print(f"\npipeline cost per window ({os.path.basename(args.audio[0])}): batch 1 "
              f"{cost['batch_1']['per_window_s']} s, batch {args.batch_size} "
              f"{cost[f'batch_{args.batch_size}']['per_window_s']} s (batching gain x{cost['batching_gain']})")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(dict(meta, results=rows, window_cost=cost, load_average_before=load_before,
                           load_average_after=list(os.getloadavg())), f, indent=2)
            f.write("\n")
        print(f"\nwrote {args.out}")
    return 0 if rows and all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

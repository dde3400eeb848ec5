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
    p.add_argument("--out", default=os.path.join(HERE, "results", "serving_throughput.json"))
    args = p.parse_args(argv)
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

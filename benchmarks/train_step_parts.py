"""Where does the CPU train step lose to torch? The same operations, forward + backward, in XLA and in torch.

    python benchmarks/train_step_parts.py [--model tiny.en] [--batch 4] [--repeats 5] [--xla_flags "..."]

One thread each (XLA's multi-threaded Eigen off, ``torch.set_num_threads(1)``): the work, not the threads.
Shapes are those of ``benchmarks/train_throughput.py``'s step (batch x 30 s, 54 decoder positions) for the
model's sizes. Each part is a scalar loss of one operation's output, differentiated with respect to its
inputs and weights, so both libraries run forward and backward of the same arithmetic:

- ``conv stem``: conv(k3) + GELU + conv(k3, stride 2) + GELU on the log-mel frames
- ``gelu``: exact GELU (erf) on an encoder MLP's hidden activations
- ``mlp matmuls``: the encoder MLP's two products (no activation)
- ``attention``: softmax attention over 1500 frames, all heads (XLA: plain einsums; torch: its
  ``scaled_dot_product_attention``); ``attention (model's)``: the same through the model's
  ``layers.attend`` (on one CPU device its per-head loop with a flash-style gradient), torch as before
- ``vocab + CE``: the decoder's output projection over the vocabulary and the cross-entropy

Writes ``benchmarks/results/train_step_parts.{json,md}``: median CPU seconds per call and XLA / torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
SIZES = {"tiny.en": (384, 6, 1536, 51864), "base": (512, 8, 2048, 51865)}


def _median_time(fn, repeats: int) -> float:
    """Median CPU seconds of the process per call (one thread: the work, steadier than wall time on a
    shared machine)."""
    fn()
    fn()  # the first call compiles (XLA) or warms up (torch)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def jax_parts(b, d, heads, ffn, vocab, repeats):
    import jax
    import jax.numpy as jnp

    k = iter(jax.random.split(jax.random.PRNGKey(0), 16))
    r = lambda *s: jax.random.normal(next(k), s, jnp.float32) * 0.05  # noqa: E731
    gelu = lambda x: jax.nn.gelu(x, approximate=False)  # noqa: E731

    def conv(x, w, stride):  # x (b, t, c), w (k, c, o)
        return jax.lax.conv_general_dilated(x, w, (stride,), [(1, 1)], dimension_numbers=("NWC", "WIO", "NWC"))

    def stem(x, w1, w2):
        return jnp.sum(gelu(conv(gelu(conv(x, w1, 1)), w2, 2)) ** 2)

    def attention(q, kk, v):  # (b, t, h, dh)
        s = jnp.einsum("bthd,bshd->bhts", q, kk)
        return jnp.sum(jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v) ** 2)

    def model_attention(q, kk, v):  # the model's attention: on one CPU device its per-head loop
        from whisper_t5x.model.layers import attend

        return jnp.sum(attend(q, [(jnp.swapaxes(kk, 1, 2), jnp.swapaxes(v, 1, 2), None)]) ** 2)

    def vocab_ce(h, table, labels):
        logits = jnp.einsum("btd,vd->btv", h, table)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.sum(jnp.take_along_axis(logp, labels[..., None], axis=-1))

    dh = d // heads
    labels = jax.random.randint(next(k), (b, 54), 0, vocab)
    cases = {
        "conv stem": (stem, (r(b, 3000, 80), r(3, 80, d), r(3, d, d))),
        "gelu": (lambda x: jnp.sum(gelu(x) ** 2), (r(b, 1500, ffn),)),
        "mlp matmuls": (lambda x, w1, w2: jnp.sum((x @ w1 @ w2) ** 2), (r(b, 1500, d), r(d, ffn), r(ffn, d))),
        "attention": (attention, (r(b, 1500, heads, dh), r(b, 1500, heads, dh), r(b, 1500, heads, dh))),
        "attention (model's)": (model_attention, (r(b, 1500, heads, dh), r(b, 1500, heads, dh),
                                                  r(b, 1500, heads, dh))),
        "vocab + CE": (lambda h, t: vocab_ce(h, t, labels), (r(b, 54, d), r(vocab, d))),
    }
    out = {}
    for name, (f, args) in cases.items():
        g = jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(args)))))
        out[name] = _median_time(lambda: jax.block_until_ready(g(*args)), repeats)
    return out


def torch_parts(b, d, heads, ffn, vocab, repeats):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: (torch.randn(*s, generator=g) * 0.05).requires_grad_(True)  # noqa: E731
    dh = d // heads
    labels = torch.randint(0, vocab, (b, 54), generator=g)

    def stem(x, w1, w2):  # x (b, c, t), w (o, c, k)
        return (F.gelu(F.conv1d(F.gelu(F.conv1d(x, w1, padding=1)), w2, stride=2, padding=1)) ** 2).sum()

    def attention(q, kk, v):  # (b, h, t, dh)
        return (F.scaled_dot_product_attention(q, kk, v, scale=1.0) ** 2).sum()

    cases = {
        "conv stem": (stem, (r(b, 80, 3000), r(d, 80, 3), r(d, d, 3))),
        "gelu": (lambda x: (F.gelu(x) ** 2).sum(), (r(b, 1500, ffn),)),
        "mlp matmuls": (lambda x, w1, w2: ((x @ w1 @ w2) ** 2).sum(), (r(b, 1500, d), r(d, ffn), r(ffn, d))),
        "attention": (attention, (r(b, heads, 1500, dh), r(b, heads, 1500, dh), r(b, heads, 1500, dh))),
        "attention (model's)": (attention, (r(b, heads, 1500, dh), r(b, heads, 1500, dh), r(b, heads, 1500, dh))),
        "vocab + CE": (lambda h, t: F.cross_entropy((h @ t.T).reshape(-1, vocab), labels.reshape(-1),
                                                    reduction="sum"), (r(b, 54, d), r(vocab, d))),
    }
    out = {}
    for name, (f, args) in cases.items():
        def run():
            for a in args:
                a.grad = None
            f(*args).backward()
        out[name] = _median_time(run, repeats)
    return out


from _machine import cpu_name as _cpu  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny.en", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--xla_flags", default="", help="extra XLA_FLAGS (a lever to measure; recorded)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "train_step_parts"))
    args = ap.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags + " --xla_cpu_multi_thread_eigen"
                               "=false intra_op_parallelism_threads=1").strip()
    d, heads, ffn, vocab = SIZES[args.model]
    ours = jax_parts(args.batch, d, heads, ffn, vocab, args.repeats)
    theirs = torch_parts(args.batch, d, heads, ffn, vocab, args.repeats)
    rows = [dict(part=k, xla_s=ours[k], torch_s=theirs[k], ratio=ours[k] / theirs[k]) for k in ours]
    meta = dict(model=args.model, batch=args.batch, repeats=args.repeats, cpu=_cpu(), xla_flags=os.environ["XLA_FLAGS"],
                command=" ".join(["python", "benchmarks/train_step_parts.py"] + list(argv or sys.argv[1:])))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(dict(meta, rows=rows), f, indent=2)
    lines = [f"Parts of the train step, forward + backward, one thread each ({meta['cpu']}), {args.model} sizes, "
             f"batch {args.batch}; median of {args.repeats} calls.", "",
             "| part | XLA CPU s | torch CPU s | XLA / torch |", "|---|---:|---:|---:|"]
    lines += [f"| {r['part']} | {r['xla_s']:.3f} | {r['torch_s']:.3f} | {r['ratio']:.2f}x |" for r in rows]
    lines += ["", f"Command: `{meta['command']}` with XLA_FLAGS={meta['xla_flags']}"]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training core: losses against torch, the optimizer against torch's AdamW, train-state axes, frozen
parameters, gradient accumulation, bf16 compute with float32 masters, rematerialisation, the eval step,
distillation and the student's initialisation. Small random models on one device."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _training_core_batches as batches  # noqa: E402

from whisper_t5x.checkpoints import layout  # noqa: E402
from whisper_t5x.model.config import WhisperConfig  # noqa: E402
from whisper_t5x.model.whisper import WhisperModule  # noqa: E402
from whisper_t5x.training import losses, optim, state as state_lib, step as step_lib, student  # noqa: E402

# 4 s windows (200 frames) instead of 30 s keep every test fast; parity with 30 s windows is in
# test_training_core_parity.py.
CONFIG = WhisperConfig(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, max_source_positions=100)
FRAMES = CONFIG.num_frames
LR = 1e-3


def _init(config, seed=0):
    """(module, params, params_axes): random params from the init's shapes (nothing compiled). Larger
    than the init's weights, so that every layer matters to the loss."""
    module = WhisperModule(config)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 80, config.num_frames)),
                            jnp.zeros((1, 4), jnp.int32))
    rs = np.random.RandomState(seed)

    def draw(path, s):
        noise = rs.randn(*s.shape).astype(np.float32)
        return 1.0 + 0.1 * noise if optim.path_name(path).endswith("scale") else 0.1 * noise

    return module, jax.tree_util.tree_map_with_path(draw, shapes["params"]), shapes["params_axes"]


@pytest.fixture(scope="module")
def model():
    return _init(CONFIG)


def make_batch():
    special = CONFIG.special_tokens
    rs = np.random.RandomState(0)
    rows = [
        batches.row(special, [special.sot, special.first_language, special.transcribe, special.no_timestamps],
                    rs.randint(0, 50000, 9)),
        batches.row(special, [special.sot, special.first_language, special.transcribe],
                    [special.timestamp_begin] + list(rs.randint(0, 50000, 4)) + [special.timestamp_begin + 50],
                    prompt=rs.randint(0, 50000, 3)),
        batches.row(special, [special.sot, special.no_timestamps], rs.randint(0, 50000, 5)),
        batches.row(special, [special.sot, special.no_timestamps], rs.randint(0, 50000, 11)),
    ]
    return batches.build(rs.randn(4, 80, FRAMES).astype(np.float32), rows, special, 16)


@pytest.fixture(scope="module")
def batch():
    return make_batch()


def _optimizer(params, trainable=None, **changes):
    # eps = 1e-4 (not 1e-8): Adam turns any gradient far above eps into a step of about LR, so with a
    # tiny eps a gradient of 1e-7 (against 4 elsewhere) whose rounding differs between two equivalent
    # computations moves its parameter by a visibly different amount (measured 2% of LR).
    values = dict(learning_rate=LR, warmup_steps=0, decay="constant", weight_decay=0.1, eps=1e-4)
    values.update(changes)
    return optim.make_optimizer(optim.OptimizerConfig(**values), params, trainable)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


# ------------------------------------------------------------------------------------ losses
def test_batch_builder_masks_prefix_prompt_and_padding(batch):
    special = CONFIG.special_tokens
    np.testing.assert_array_equal(batch.labels[:, :-1], batch.decoder_input_ids[:, 1:])
    # Row 0: 4 forced tokens, 9 targets + end-of-text: labels 3 .. 12 count.
    assert batch.loss_mask[0].tolist() == [0.0] * 3 + [1.0] * 10 + [0.0] * 3
    # Row 1: <|startofprev|> + 3 prompt tokens + 3 forced: the first target is label 6.
    assert batch.loss_mask[1, :6].sum() == 0 and batch.loss_mask[1, 6] == 1
    assert batch.labels[1, 6] == special.timestamp_begin
    last = int(np.flatnonzero(batch.loss_mask[2])[-1])
    assert batch.labels[2, last] == special.eot and batch.loss_mask[2, last + 1:].sum() == 0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_token_cross_entropy_matches_torch(smoothing):
    import torch

    rs = np.random.RandomState(1)
    logits = (rs.randn(3, 7, 50) * 4).astype(np.float32)
    labels = rs.randint(0, 50, (3, 7))
    mask = (rs.rand(3, 7) > 0.3).astype(np.float32)
    total, count = losses.token_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask), smoothing)
    ref = torch.nn.functional.cross_entropy(
        torch.tensor(logits).reshape(-1, 50), torch.tensor(np.where(mask > 0, labels, -100)).reshape(-1),
        ignore_index=-100, label_smoothing=smoothing, reduction="sum")
    assert float(count) == mask.sum()
    np.testing.assert_allclose(float(total), float(ref), rtol=1e-5)
    # bf16 logits are reduced in float32.
    total16, _ = losses.token_cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels), jnp.asarray(mask))
    assert total16.dtype == jnp.float32


def test_distillation_loss_matches_torch_kl():
    import torch

    rs = np.random.RandomState(2)
    student_logits = (rs.randn(2, 5, 40) * 3).astype(np.float32)
    teacher_logits = (rs.randn(2, 5, 40) * 3).astype(np.float32)
    labels = rs.randint(0, 40, (2, 5))
    mask = np.array([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], np.float32)
    t = 2.0
    total, count, parts = losses.distillation_loss(jnp.asarray(student_logits), jnp.asarray(teacher_logits),
                                                   jnp.asarray(labels), jnp.asarray(mask), 0.8, 1.0, t)
    s_log = torch.log_softmax(torch.tensor(student_logits) / t, -1)
    t_log = torch.log_softmax(torch.tensor(teacher_logits) / t, -1)
    kl = torch.nn.functional.kl_div(s_log, t_log, log_target=True, reduction="none").sum(-1)
    kl_sum = float((kl * torch.tensor(mask)).sum())
    ce = torch.nn.functional.cross_entropy(torch.tensor(student_logits).reshape(-1, 40),
                                           torch.tensor(np.where(mask > 0, labels, -100)).reshape(-1),
                                           ignore_index=-100, reduction="sum")
    np.testing.assert_allclose(float(parts["kl"]), kl_sum, rtol=1e-5)
    np.testing.assert_allclose(float(parts["ce"]), float(ce), rtol=1e-5)
    np.testing.assert_allclose(float(total), 0.8 * float(ce) + 1.0 * t * t * kl_sum, rtol=1e-5)
    assert float(count) == mask.sum()
    # No KL when the student is the teacher, and no gradient into the teacher.
    _, _, same = losses.distillation_loss(jnp.asarray(teacher_logits), jnp.asarray(teacher_logits),
                                          jnp.asarray(labels), jnp.asarray(mask))
    assert abs(float(same["kl"])) < 1e-5
    grad_teacher = jax.grad(lambda tl: losses.distillation_loss(jnp.asarray(student_logits), tl, jnp.asarray(labels),
                                                                jnp.asarray(mask))[0])(jnp.asarray(teacher_logits))
    assert float(jnp.abs(grad_teacher).max()) == 0.0


def test_loss_errors_are_named():
    with pytest.raises(ValueError, match="vocabulary axis"):
        losses.token_cross_entropy(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 4)))
    with pytest.raises(losses.MissingTeacherLogitsError):
        losses.distillation_objective()(jnp.zeros((1, 2, 5)), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2)), None)
    with pytest.raises(ValueError, match="temperature"):
        losses.distillation_objective(temperature=0.0)
    with pytest.raises(losses.MissingTeacherLogitsError):
        step_lib.make_train_step(WhisperModule(CONFIG), None, loss="distill")


# ------------------------------------------------------------------------------------ optimizer
def test_schedules():
    lin = optim.learning_rate_schedule(optim.OptimizerConfig(learning_rate=1.0, warmup_steps=10, total_steps=110,
                                                             end_learning_rate_ratio=0.1))
    assert [float(lin(s)) for s in (0, 5, 10)] == pytest.approx([0.0, 0.5, 1.0])
    assert float(lin(60)) == pytest.approx(0.55) and float(lin(110)) == pytest.approx(0.1)
    cos = optim.learning_rate_schedule(optim.OptimizerConfig(learning_rate=1.0, warmup_steps=0, decay="cosine",
                                                             total_steps=100))
    assert float(cos(0)) == pytest.approx(1.0) and float(cos(50)) == pytest.approx(0.5, abs=1e-6)
    assert float(cos(100)) == pytest.approx(0.0, abs=1e-6)
    const = optim.learning_rate_schedule(optim.OptimizerConfig(learning_rate=2.0, warmup_steps=4, decay="constant"))
    assert [float(const(s)) for s in (2, 4, 1000)] == pytest.approx([1.0, 2.0, 2.0])


@pytest.mark.parametrize("changes, message", [
    (dict(decay="linear", total_steps=None), "needs total_steps"),
    (dict(decay="step"), "decay="),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(warmup_steps=10, total_steps=5), "must exceed warmup_steps"),
    (dict(accumulation_steps=0), "accumulation_steps"),
])
def test_optimizer_config_errors(changes, message):
    with pytest.raises(optim.OptimizerConfigError, match=message):
        optim.OptimizerConfig(**dict(dict(total_steps=100), **changes))


def test_decay_and_trainable_masks(model):
    _, params, _ = model
    decay = {optim.path_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
    assert decay["decoder/layers/0/fc1/kernel"] and decay["encoder/conv1/kernel"]
    assert decay["decoder/layers/0/self_attn/k_proj/kernel"]
    assert not any(decay[n] for n in decay if n.endswith("/bias") or "layer_norm" in n or "embed_" in n)
    mask = {optim.path_name(p): v for p, v in
            jax.tree_util.tree_leaves_with_path(optim.trainable_mask(params, freeze_encoder=True))}
    assert not any(v for n, v in mask.items() if n.startswith("encoder/"))
    assert all(v for n, v in mask.items() if n.startswith("decoder/"))
    default = {optim.path_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(optim.trainable_mask(params))}
    assert default["encoder/embed_positions/embedding"] is False and default["encoder/conv1/kernel"] is True
    with pytest.raises(optim.OptimizerConfigError, match="match no parameter"):
        optim.trainable_mask(params, frozen=("encoder/nope",))
    with pytest.raises(optim.OptimizerConfigError, match="nothing to train"):
        optim.make_optimizer(optim.OptimizerConfig(decay="constant"), params,
                             jax.tree_util.tree_map(lambda _: False, params))


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_adamw_matches_torch(clip):
    """Three AdamW updates with warmup, the decay mask and clipping equal torch.optim.AdamW's."""
    import torch

    rs = np.random.RandomState(3)
    params = {"fc": {"kernel": rs.randn(4, 3).astype(np.float32), "bias": rs.randn(3).astype(np.float32)}}
    grads = [{"fc": {"kernel": rs.randn(4, 3).astype(np.float32), "bias": rs.randn(3).astype(np.float32)}}
             for _ in range(3)]
    config = optim.OptimizerConfig(learning_rate=0.1, warmup_steps=2, decay="constant", weight_decay=0.3,
                                   b1=0.8, b2=0.95, eps=1e-6, max_grad_norm=clip)
    opt = optim.make_optimizer(config, params)
    opt_state, ours = opt.init(params), jax.tree_util.tree_map(jnp.asarray, params)
    for g in grads:
        updates, opt_state = opt.update(g, opt_state, ours)
        ours = jax.tree_util.tree_map(lambda p, u: p + u, ours, updates)
    kernel = torch.tensor(params["fc"]["kernel"], requires_grad=True)
    bias = torch.tensor(params["fc"]["bias"], requires_grad=True)
    ref = torch.optim.AdamW([{"params": [kernel], "weight_decay": 0.3}, {"params": [bias], "weight_decay": 0.0}],
                            lr=0.1, betas=(0.8, 0.95), eps=1e-6)
    for step, g in enumerate(grads):
        kernel.grad, bias.grad = torch.tensor(g["fc"]["kernel"]), torch.tensor(g["fc"]["bias"])
        if clip:
            torch.nn.utils.clip_grad_norm_([kernel, bias], clip)
        for group in ref.param_groups:
            group["lr"] = 0.1 * min(1.0, step / 2)  # warmup: 0, 0.05, 0.1
        ref.step()
    np.testing.assert_allclose(np.asarray(ours["fc"]["kernel"]), kernel.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours["fc"]["bias"]), bias.detach().numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ state
def _adam_arrays(opt_state):
    """{param path: [mu, nu, ...]} over the optimizer state's parameter-shaped leaves."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
        keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        tops = [i for i, k in enumerate(keys) if k in ("encoder", "decoder")]
        if tops:
            out.setdefault("/".join(keys[tops[0]:]), []).append(leaf)
    return out


def test_state_axes_follow_the_params(model):
    _, params, params_axes = model
    opt = _optimizer(params, optim.trainable_mask(params, freeze_encoder=True))
    axes = state_lib.state_logical_axes(params_axes, opt, params)
    assert axes.params["decoder"]["layers"]["0"]["fc1"]["kernel"] == P("embed", "mlp")
    assert axes.step == P() and axes.rng == P()
    specs = _adam_arrays(axes.opt_state)
    assert specs["decoder/layers/0/fc1/kernel"] == [P("embed", "mlp")] * 2  # mu and nu
    assert specs["decoder/embed_tokens/embedding"] == [P("vocab", "embed")] * 2
    assert not [k for k in specs if k.startswith("encoder/")]  # frozen: no optimizer state at all
    others = [s for p, s in jax.tree_util.tree_leaves_with_path(axes.opt_state, is_leaf=lambda x: isinstance(x, P))
              if not any(isinstance(k, jax.tree_util.DictKey) and k.key == "decoder" for k in p)]
    assert others and all(s == P() for s in others)  # counts are replicated
    with pytest.raises(ValueError, match="without logical axes"):
        state_lib.state_logical_axes({"params_axes": {}}, opt, params)


def test_frozen_encoder_has_no_gradients_no_state_and_stays_bit_identical(model, batch, one_step):
    module, params, _ = model
    trainable = optim.trainable_mask(params, freeze_encoder=True)
    opt = _optimizer(params, trainable)
    state = state_lib.create_train_state(params, opt, 0)
    assert not [k for k in _adam_arrays(state.opt_state) if k.startswith("encoder/")]
    assert _adam_arrays(state.opt_state)["decoder/layers/1/fc2/kernel"][0].shape == (256, 64)
    objective = losses.cross_entropy_objective()
    _, _, _, grads = jax.eval_shape(lambda p, b: step_lib.loss_and_grads(module, objective, p, b, trainable),
                                    params, batch)
    assert all(g is None for g in jax.tree_util.tree_leaves(grads["encoder"], is_leaf=lambda x: x is None))
    assert grads["decoder"]["layers"]["0"]["fc1"]["kernel"].shape == (64, 256)
    compiled = jax.jit(step_lib.make_train_step(module, opt)).lower(state, batch).compile()
    new_state, metrics = compiled(state, batch)
    for old, new in zip(jax.tree_util.tree_leaves(params["encoder"]), jax.tree_util.tree_leaves(new_state.params["encoder"])):
        assert np.asarray(new).tobytes() == np.asarray(old).tobytes()
    assert _max_diff(new_state.params["decoder"], params["decoder"]) > 0.1 * LR
    assert float(metrics["token_count"]) == float(batch.loss_mask.sum())
    # No encoder backward pass in the program: freezing saves at least the encoder's backward, about
    # twice its forward (asserted: 1.5 times).
    encode = jax.jit(lambda p, f: module.apply({"params": p}, f, method=WhisperModule.encode)).lower(
        params, batch.input_features).compile()
    saved = one_step.flops - compiled.cost_analysis()["flops"]
    assert saved >= 1.5 * encode.cost_analysis()["flops"], (saved, encode.cost_analysis()["flops"])


# ------------------------------------------------------------------------------------ the step
class OneStep:
    """One full-batch step of the float32 model: params after it, metrics, its optimizer, its FLOPs."""

    def __init__(self, module, params, batch):
        self.opt = _optimizer(params)
        state = state_lib.create_train_state(params, self.opt, 0)
        compiled = jax.jit(step_lib.make_train_step(module, self.opt)).lower(state, batch).compile()
        self.flops = compiled.cost_analysis()["flops"]
        state, metrics = compiled(state, batch)
        self.params = jax.tree_util.tree_map(np.asarray, state.params)
        self.metrics = jax.device_get(metrics)
        self.step = int(state.step)


@pytest.fixture(scope="module")
def one_step(model, batch):
    module, params, _ = model
    return OneStep(module, params, batch)


def test_accumulation_equals_the_full_batch(model, batch, one_step):
    module, params, _ = model
    ref_params, ref_metrics, opt, k = one_step.params, one_step.metrics, one_step.opt, 2
    state, metrics = jax.jit(step_lib.make_train_step(module, opt, accumulation_steps=k))(
        state_lib.create_train_state(params, opt, 0), batch)
    # Rows have different token counts (10, 7, 6, 12 targets): a mean of microbatch means would differ.
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(ref_metrics["grad_norm"]), rtol=1e-5)
    assert float(metrics["token_count"]) == float(ref_metrics["token_count"])
    # One AdamW update moves parameters by about LR; the two updates agree to 0.1% of it (measured 0.01%).
    assert _max_diff(state.params, ref_params) <= 1e-3 * LR
    with pytest.raises(ValueError, match="multiple of accumulation_steps"):
        jax.jit(step_lib.make_train_step(module, opt, accumulation_steps=3))(
            state_lib.create_train_state(params, opt, 0), batch)


def test_step_metrics_and_eval_step(model, batch, one_step):
    module, params, _ = model
    ref_params, metrics, step = one_step.params, one_step.metrics, one_step.step
    assert step == 1 and float(metrics["learning_rate"]) == pytest.approx(LR)
    assert float(metrics["grad_norm"]) > 0 and float(metrics["loss"]) == pytest.approx(float(metrics["ce"]))
    assert _max_diff(ref_params, params) > 0.5 * LR
    evaluated = jax.jit(step_lib.make_eval_step(module))(params, batch)
    np.testing.assert_allclose(float(evaluated["loss"]), float(metrics["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(evaluated["loss_sum"]) / float(evaluated["token_count"]),
                               float(metrics["loss"]), rtol=1e-6)


def test_bf16_compute_keeps_float32_masters(model, batch, one_step):
    _, params, _ = model
    ref_metrics, opt = one_step.metrics, one_step.opt
    module16 = WhisperModule(CONFIG, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    state, metrics = jax.jit(step_lib.make_train_step(module16, opt))(state_lib.create_train_state(params, opt, 0),
                                                                      batch)
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves((state.params, _adam_arrays(state.opt_state)))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    # bf16 keeps ~3 significant digits: the loss agrees with float32 compute to a few percent.
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=3e-2)
    assert float(metrics["loss"]) != float(ref_metrics["loss"])  # it really ran in bf16


def test_per_head_attention_gradient_equals_autodiff_of_plain_attention():
    """The encoder's per-head attention (used on one CPU device) has a hand-written flash-style
    gradient; it equals autodiff of plain softmax attention."""
    from whisper_t5x.model import layers

    rs = np.random.RandomState(6)
    q = jnp.asarray(rs.randn(2, 600, 2, 8).astype(np.float32)) * 0.5  # 600 queries: 2 chunks of 300
    k, v = (jnp.asarray(rs.randn(2, 2, 600, 8).astype(np.float32)) for _ in range(2))
    w = jnp.asarray(rs.randn(2, 600, 2, 8).astype(np.float32))
    grad = lambda f: jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) * w), argnums=(0, 1, 2)))  # noqa: E731
    ours = grad(layers._attend_per_head)(q, k, v)
    ref = grad(lambda q, k, v: layers._attend_all(q, [(k, v, None)]))(q, k, v)
    for a, b in zip(ours, ref):
        assert float(jnp.abs(a - b).max()) <= 1e-5 * float(jnp.abs(b).max())
    bf16 = grad(layers._attend_per_head)(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    assert all(g.dtype == jnp.bfloat16 for g in bf16)


def test_remat_and_scan_give_the_same_step(model, batch, one_step):
    _, params, _ = model
    scanned = WhisperModule(CONFIG.replace(scan_layers=True, remat_policy="full"))
    opt = _optimizer(layout.to_scan_layout(params))
    state, metrics = jax.jit(step_lib.make_train_step(scanned, opt))(
        state_lib.create_train_state(layout.to_scan_layout(params), opt, 0), batch)
    np.testing.assert_allclose(float(metrics["loss"]), float(one_step.metrics["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(one_step.metrics["grad_norm"]), rtol=1e-5)
    got = layout.to_loop_layout(jax.tree_util.tree_map(np.asarray, state.params))
    assert _max_diff(got, one_step.params) <= 1e-3 * LR
    with pytest.raises(ValueError, match="remat_policy"):
        CONFIG.replace(remat_policy="some")


# ------------------------------------------------------------------------------------ distillation
def test_kept_decoder_layers():
    assert student.kept_decoder_layers(6, 2) == (0, 5)
    assert student.kept_decoder_layers(32, 2) == (0, 31)
    assert student.kept_decoder_layers(4, 3) == (0, 2, 3)
    assert student.kept_decoder_layers(32, 4) == (0, 10, 21, 31)
    assert student.kept_decoder_layers(4, 4) == (0, 1, 2, 3)
    assert student.kept_decoder_layers(4, 1) == (3,)
    with pytest.raises(student.StudentLayersError, match="only 4"):
        student.kept_decoder_layers(4, 5)
    with pytest.raises(student.StudentLayersError, match="at least one"):
        student.kept_decoder_layers(4, 0)


@pytest.mark.parametrize("scan", [False, True])
def test_student_from_teacher(model, scan):
    config = CONFIG.replace(decoder_layers=4, alignment_heads=((1, 0), (3, 2), (2, 1)))
    rs = np.random.RandomState(4)
    _, params, _ = model  # two-layer decoder: build a four-layer one from it
    layers = {str(i): jax.tree_util.tree_map(lambda x: x + rs.randn(*x.shape).astype(np.float32),
                                             params["decoder"]["layers"][str(i % 2)]) for i in range(4)}
    teacher = dict(params, decoder=dict(params["decoder"], layers=layers))
    if scan:
        teacher = layout.to_scan_layout(teacher)
    config_s, params_s = student.student_from_teacher(config.replace(scan_layers=scan), teacher, 2)
    assert config_s.decoder_layers == 2 and config_s.encoder_layers == config.encoder_layers
    assert config_s.alignment_heads == ((1, 2),)  # layer 3 -> 1; layers 1 and 2 dropped
    assert layout.is_scan_layout(params_s) == scan
    loop = layout.to_loop_layout(params_s)
    for new, old in ((0, 0), (1, 3)):
        assert _max_diff(loop["decoder"]["layers"][str(new)], layers[str(old)]) == 0.0
    assert _max_diff(loop["encoder"], params["encoder"]) == 0.0
    assert _max_diff(loop["decoder"]["embed_tokens"], params["decoder"]["embed_tokens"]) == 0.0
    WhisperModule(config_s)  # the student config is a valid model
    with pytest.raises(student.StudentLayersError):
        student.student_from_teacher(config, teacher if not scan else layout.to_loop_layout(teacher), 5)


def test_distillation_step_shares_the_frozen_encoder(model, batch):
    teacher_module, teacher_params, _ = model
    config_s, params_s = student.student_from_teacher(CONFIG, teacher_params, 1)
    module_s = WhisperModule(config_s)
    opt = _optimizer(params_s, optim.trainable_mask(params_s, freeze_encoder=True))
    shared = step_lib.Teacher(teacher_module, share_encoder=True)
    own = step_lib.Teacher(teacher_module, share_encoder=False)
    # The student's encoder is the teacher's: reusing its output changes nothing.
    evaluated = {t.share_encoder: jax.jit(step_lib.make_eval_step(module_s, "distill", t))(params_s, batch, teacher_params)
                 for t in (shared, own)}
    np.testing.assert_allclose(float(evaluated[True]["loss"]), float(evaluated[False]["loss"]), rtol=1e-6)
    state, metrics = jax.jit(step_lib.make_train_step(module_s, opt, loss="distill", teacher=shared))(
        state_lib.create_train_state(params_s, opt, 0), batch, teacher_params)
    np.testing.assert_allclose(float(metrics["loss"]), float(evaluated[True]["loss"]), rtol=1e-6)
    assert float(metrics["kl"]) > 0 and int(state.step) == 1
    np.testing.assert_allclose(float(metrics["loss"]), 0.8 * float(metrics["ce"]) + 4.0 * float(metrics["kl"]),
                               rtol=1e-5)
    assert _max_diff(state.params["decoder"], params_s["decoder"]) > 0.1 * LR
    full_opt = _optimizer(params_s)
    with pytest.raises(step_lib.SharedEncoderError):
        step_lib.make_train_step(module_s, full_opt, loss="distill", teacher=shared)(
            state_lib.create_train_state(params_s, full_opt, 0), batch, teacher_params)
    with pytest.raises(losses.MissingTeacherLogitsError, match="teacher_params"):
        step_lib.make_train_step(module_s, opt, loss="distill", teacher=shared)(
            state_lib.create_train_state(params_s, opt, 0), batch)

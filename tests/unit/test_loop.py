"""The plain-PyTorch pieces of training (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparkvision.config import TrainConfig
from sparkvision.models import build_model
from sparkvision.models.preprocess import normalize
from sparkvision.training import checkpoint as ckpt
from sparkvision.training.loop import (
    EVAL_BATCH_BYTES,
    compute_loss,
    epoch_indices,
    evaluate,
    lr_factor,
    make_optimizer,
    photo_augment,
    shift_augment,
    steps_per_epoch,
    train_epoch,
)


@pytest.mark.parametrize("n", [1, 7, 64, 65, 900])
def test_epoch_indices_fill_equal_steps_and_cover_every_row(n):
    steps = steps_per_epoch(900, 64)  # the largest rank has 900 rows
    order = epoch_indices(n, steps, 64, seed=1, epoch=0, rank=0)
    assert len(order) == steps * 64 == 15 * 64
    assert set(order.tolist()) == set(range(n))
    # each full pass is a permutation, so no row repeats before all rows were seen
    assert len(set(order[: min(n, len(order))].tolist())) == min(n, len(order))


def test_epoch_indices_are_seeded_per_epoch_and_rank():
    a = epoch_indices(100, 2, 64, seed=3, epoch=0, rank=0)
    assert np.array_equal(a, epoch_indices(100, 2, 64, seed=3, epoch=0, rank=0))
    assert not np.array_equal(a, epoch_indices(100, 2, 64, seed=3, epoch=1, rank=0))
    assert not np.array_equal(a, epoch_indices(100, 2, 64, seed=3, epoch=0, rank=1))


def test_shift_augment_moves_content_and_keeps_shape():
    x = torch.zeros((4, 1, 8, 8), dtype=torch.uint8)
    x[:, :, 3:5, 3:5] = 200
    gen = torch.Generator().manual_seed(0)
    out = shift_augment(x, 2, gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    # the 2x2 block is fully kept, the padding is black
    assert torch.all(out.sum(dim=(1, 2, 3)) == x.sum(dim=(1, 2, 3)))
    assert not torch.equal(out, x)
    assert torch.equal(shift_augment(x, 0, gen), x)
    # shifting raw pixels then scaling equals the old scaling-then-shifting (-1 padding)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    old = F.pad(normalize(x), (2, 2, 2, 2), value=-1.0)
    dy = torch.randint(0, 5, (4,), generator=g1)
    dx = torch.randint(0, 5, (4,), generator=g1)
    want = torch.stack([old[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] for i in range(4)])
    assert torch.equal(normalize(shift_augment(x, 2, g2)), want)


def test_photo_augment_crops_flips_and_is_seeded():
    """Random resized crop + flip, batched: shape kept, deterministic for a seed, a
    horizontal gradient is flipped in some images and zoomed in others."""
    ramp = torch.arange(32, dtype=torch.float32).mul(8).expand(6, 3, 32, 32)
    x = ramp.to(torch.uint8).contiguous()
    a = photo_augment(x, torch.Generator().manual_seed(1))
    b = photo_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.equal(a, b)
    slope = (a[:, 0, 16, -4] - a[:, 0, 16, 3])  # left-to-right change of each image
    assert (slope < 0).any() and (slope > 0).any()  # some flipped, some not
    assert float(a.min()) >= 0 and float(a.max()) <= 255
    span = slope.abs()
    # a crop zooms in: the same 25 output columns span less of the ramp than the full image
    assert float(span.max()) <= 8 * 25 + 1e-3 and float(span.min()) < 0.9 * 8 * 25
    assert not torch.equal(a, photo_augment(x, torch.Generator().manual_seed(2)))


def test_normalize_with_statistics():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    out = normalize(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    want = (x.to(torch.float64) / 255 - torch.tensor([0.485, 0.456, 0.406],
                                                     dtype=torch.float64).view(1, 3, 1, 1)
            ) / torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(out.double(), want, atol=1e-5)
    assert torch.allclose(normalize(x, (0.5,), (0.5,)), normalize(x), atol=1e-6)
    gray = normalize(x[:, :1], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # RGB config
    assert gray.shape == (1, 1, 1, 3)


def test_lr_schedule_warms_up_then_decays():
    values = [lr_factor("cosine", s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert values[-1] < 0.05
    assert lr_factor("constant", 50, 100, 10) == 1.0


def test_losses_and_class_weights():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0])
    ce = compute_loss(logits, y, "cross_entropy", None)
    assert ce == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())
    mse = compute_loss(logits, y, "mse", None)
    probs = torch.softmax(logits, 1)
    assert mse == pytest.approx(((probs - torch.tensor([[1.0, 0], [1.0, 0]])) ** 2).mean().item())
    w = torch.tensor([0.0, 1.0])
    assert compute_loss(logits, y, "mse", w) == pytest.approx(0.0)


def test_normalize_range():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8)
    out = normalize(x)
    assert out.dtype == torch.float32
    assert out.tolist() == pytest.approx([-1.0, 1.0, 128 * 2 / 255 - 1], abs=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_checkpoint_round_trip_restores_model_and_optimizer(tmp_path, optimizer):
    config = TrainConfig(model="cnn", num_classes=3, image_shape=(8, 8, 1), optimizer=optimizer)
    model = build_model("cnn", 3, (8, 8, 1))
    opt = make_optimizer(config, model.parameters())
    for _ in range(2):
        loss = model(torch.randn(4, 1, 8, 8)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = ckpt.save_checkpoint(str(tmp_path), 2, model, opt, {"history": [{"epoch": 2}]})
    assert path.endswith("epoch-0002.safetensors") and ckpt.latest_epoch(str(tmp_path)) == 2
    state, opt_state, info = ckpt.load_checkpoint(str(tmp_path), 2)
    fresh = build_model("cnn", 3, (8, 8, 1))
    fresh.load_state_dict(state)
    fresh_opt = make_optimizer(config, fresh.parameters())
    fresh_opt.load_state_dict(opt_state)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert info["history"] == [{"epoch": 2}] and info["epoch"] == 2
    before = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
    after = fresh_opt.state_dict()["state"][0]
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_focal_loss_is_cross_entropy_at_gamma_0_and_down_weights_easy_rows():
    import torch

    from sparkvision.training.loop import compute_loss

    torch.manual_seed(0)
    logits = torch.randn(64, 5)
    y = torch.randint(0, 5, (64,))
    ce = compute_loss(logits, y, "cross_entropy", None)
    assert torch.allclose(compute_loss(logits, y, "focal", None, gamma=0.0), ce)
    focal = compute_loss(logits, y, "focal", None, gamma=2.0, reduction="none")
    p = torch.softmax(logits, 1)[torch.arange(64), y]
    expected = -(1 - p) ** 2 * torch.log(p)
    assert torch.allclose(focal, expected, atol=1e-6)
    w = torch.linspace(0.5, 2.0, 5)
    weighted = compute_loss(logits, y, "focal", w, gamma=2.0, reduction="sum")
    assert torch.allclose(weighted, (expected * w[y]).sum(), atol=1e-5)


def _one_sgd_step(clip: float) -> float:
    """L2 norm of the change of the weights after one plain-SGD step at lr 0.1."""
    torch.manual_seed(0)
    config = TrainConfig(model="cnn", num_classes=3, image_shape=(8, 8, 1), optimizer="sgd",
                         learning_rate=0.1, lr_schedule="constant", augment="none", epochs=1,
                         batch_size=16, gradient_clip_norm=clip)
    model = build_model("cnn", 3, (8, 8, 1))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    train_epoch(model, make_optimizer(config, model.parameters()), x, y, np.arange(16), config,
                gen, 0, 1, None)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return float((after - before).norm())


def test_gradient_clip_norm_bounds_the_step_from_the_api_cli_and_tuning_space():
    from sparkvision.cli import build_parser
    from sparkvision.cli.train import classifier_params
    from sparkvision.errors import InvalidParameterError
    from sparkvision.ml.classifier import ImageClassifier
    from sparkvision.tuning.space import parse_space

    # SGD's first step moves the weights by lr × the gradient: clipped, by lr × the norm
    assert _one_sgd_step(1e-3) == pytest.approx(0.1 * 1e-3, rel=1e-3)
    assert _one_sgd_step(0.0) > 10 * 0.1 * 1e-3  # 0 = no clipping
    clf = ImageClassifier(gradientClipNorm=2.5)
    assert clf.getGradientClipNorm() == 2.5
    with pytest.raises(InvalidParameterError, match="gradientClipNorm"):
        ImageClassifier(gradientClipNorm=-1.0).validateParams()
    args = build_parser().parse_args(["train", "data", "--out", "m",
                                      "--gradient-clip-norm", "0.5"])
    manifest = {"classes": ["a", "b"], "image_shape": [8, 8, 1]}
    assert classifier_params(args, manifest)["gradientClipNorm"] == 0.5
    (dim,) = parse_space({"gradientClipNorm": {"uniform": [0.5, 5.0]}})
    assert (dim.name, dim.low, dim.high) == ("gradientClipNorm", 0.5, 5.0)


def _train_twice(profile) -> tuple[bytes, tuple[float, int, int, int]]:
    torch.manual_seed(0)
    config = TrainConfig(model="cnn", num_classes=3, image_shape=(8, 8, 1), lr_schedule="cosine",
                         augment="shift", epochs=2, batch_size=8, gradient_clip_norm=1.0,
                         input_mean=(0.4,), input_std=(0.2,))
    model = build_model("cnn", 3, (8, 8, 1))
    opt = make_optimizer(config, model.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)
    steps = []
    for epoch in range(2):
        order = epoch_indices(40, 5, 8, 0, epoch, 0)
        t = train_epoch(model, opt, x, y, order, config, gen, 5 * epoch, 10, None,
                        on_step=steps.append, profile=profile)
    weights = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    return weights, (t.loss_sum, t.correct, t.count, len(steps))


def test_step_profile_times_every_phase_and_changes_nothing():
    from sparkvision.training.loop import STEP_PHASES, StepProfile

    profile = StepProfile()
    assert _train_twice(profile) == _train_twice(None)  # bit-identical weights and metrics
    d = profile.to_dict()
    assert d["steps"] == 10
    assert set(d["seconds"]) == {*STEP_PHASES, "epoch_end"}
    assert set(d["cpu_seconds"]) == set(STEP_PHASES)
    assert all(d["seconds"][k] > 0 for k in ("data", "forward", "backward", "optimizer"))
    assert d["seconds"]["allreduce"] == 0.0  # no all-reduce clock: nothing booked to it


def test_step_profile_books_the_all_reduce_out_of_the_backward_pass():
    from sparkvision.training.loop import StepProfile

    comm = [0.0, 0.0]
    profile = StepProfile(comm_clock=lambda: (comm[0], comm[1]))
    profile.start()
    comm[:] = [0.25, 0.125]  # what the comm hook spent during this backward pass
    profile.lap_comm("backward")
    profile.stop()
    assert profile.seconds["allreduce"] == 0.25 and profile.cpu_seconds["allreduce"] == 0.125
    assert profile.to_dict()["seconds"]["allreduce"] == 0.25


def test_evaluation_batches_of_big_images_are_capped_by_bytes():
    """64 images of 96x96x3 (110 KB of floats each): batches of at most EVAL_BATCH_BYTES,
    not 512 rows; the same totals as one row at a time. Small images keep 512-row batches."""
    torch.manual_seed(0)
    sizes: list[int] = []
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(96 * 96 * 3, 3))
    net.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    x = torch.randint(0, 256, (200, 3, 96, 96), dtype=torch.uint8)
    y = torch.randint(0, 3, (200,))
    got = evaluate(net, x, y, "cross_entropy")
    assert max(sizes) * 96 * 96 * 3 * 4 <= EVAL_BATCH_BYTES and len(sizes) > 1
    one = evaluate(net, x, y, "cross_entropy", batch_size=1)
    assert (got.correct, got.count) == (one.correct, one.count) == (got.correct, 200)
    assert got.loss_sum == pytest.approx(one.loss_sum, rel=1e-5)
    sizes.clear()
    small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 3))
    small.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    evaluate(small, torch.zeros(600, 1, 28, 28, dtype=torch.uint8), torch.zeros(600).long(),
             "cross_entropy")
    assert sizes == [512, 88]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_optimizer_is_fused_on_cpu_and_steps_like_the_per_tensor_loop(optimizer):
    config = TrainConfig(model="cnn", num_classes=3, image_shape=(8, 8, 1), optimizer=optimizer,
                         momentum=0.9, weight_decay=1e-4)
    torch.manual_seed(0)
    fused_net = build_model("cnn", 3, (8, 8, 1))
    loop_net = build_model("cnn", 3, (8, 8, 1))
    loop_net.load_state_dict(fused_net.state_dict())

    def groups(net):  # parameter groups work too
        params = list(net.parameters())
        return [{"params": params[:2], "lr": 0.001}, {"params": params[2:]}]

    fused = make_optimizer(config, groups(fused_net))
    assert fused.defaults["fused"] is True
    kind = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    reference = kind(groups(loop_net), lr=config.learning_rate, weight_decay=1e-4, **extra)
    assert not reference.defaults["fused"]
    x = torch.randn(6, 1, 8, 8)
    for net, opt in ((fused_net, fused), (loop_net, reference)):
        torch.manual_seed(1)  # the same dropout masks
        for _ in range(3):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_net.parameters(), loop_net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_optimizer_without_a_fused_kernel_falls_back_to_the_loop():
    config = TrainConfig(model="cnn", num_classes=3, image_shape=(8, 8, 1))
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))  # no fused kernel
    opt = make_optimizer(config, [p])
    assert not opt.defaults["fused"]
    p.grad = torch.ones_like(p)
    opt.step()
    assert p.abs().sum() > 0

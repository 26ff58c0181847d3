"""Plain PyTorch training pieces (no pyspark): batching, augmentation, loss, LR, eval."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparkvision.config import TrainConfig
from sparkvision.models.parts import head_name, hold_backbone_still
from sparkvision.models.preprocess import normalize


def steps_per_epoch(max_local_rows: int, batch_size: int) -> int:
    """Every rank takes this many steps: enough for the largest partition to see all rows."""
    return max(1, math.ceil(max_local_rows / batch_size))


def epoch_indices(n: int, steps: int, batch_size: int, seed: int, epoch: int, rank: int):
    """Seeded row order for one epoch: whole permutations, tiled to ``steps * batch_size``.

    Smaller partitions repeat rows so every rank takes the same number of full batches.
    """
    if n == 0:
        raise ValueError("a training partition has no rows")
    rng = np.random.default_rng([seed, epoch, rank])
    need = steps * batch_size
    parts = [rng.permutation(n) for _ in range(math.ceil(need / n))]
    return np.concatenate(parts)[:need]


def shift_augment(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation of each (uint8 NCHW) image by up to ``max_shift`` pixels, padded
    with black."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift), value=0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(c)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def photo_augment(x: torch.Tensor, gen: torch.Generator, min_area: float = 0.35,
                  max_ratio: float = 4 / 3) -> torch.Tensor:
    """Random resized crop and horizontal flip of a batch of (uint8 or float) NCHW images,
    batched (one affine grid sample, bilinear): each image keeps a random 35–100% of its area
    at an aspect ratio in [3/4, 4/3], resized back to its size, flipped with probability
    1/2. Returns float32 pixel values on the input's scale."""
    n = x.shape[0]
    area = min_area + (1.0 - min_area) * torch.rand(n, generator=gen)
    log_r = (torch.rand(n, generator=gen) * 2 - 1) * math.log(max_ratio)
    ratio = torch.exp(log_r)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sx)  # crop centre, in [-1, 1]
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    xf = x.to(torch.float32)
    grid = F.affine_grid(theta, list(xf.shape), align_corners=False)
    return F.grid_sample(xf, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def augment_batch(x: torch.Tensor, augment: str, max_shift: int, gen: torch.Generator
                  ) -> torch.Tensor:
    """A training batch of uint8 NCHW images augmented by ``augment`` (pixel scale kept:
    ``normalize`` follows)."""
    if augment == "photo":
        return photo_augment(x, gen)
    return shift_augment(x, max_shift, gen)


def max_shift_for(image_shape: tuple[int, int, int], augment: str) -> int:
    if augment != "shift":
        return 0
    # 2 px on 28x28 MNIST; none on images too small to shift meaningfully (8x8 digits).
    return int(min(image_shape[0], image_shape[1]) / 14)


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up then cosine decay to 2% (``cosine``), or 1.0 (``constant``)."""
    if schedule == "constant":
        return 1.0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``params`` (tensors or parameter groups), with
    torch's fused kernel where it has one for these tensors (CPU and CUDA floats): one pass
    over all the parameters instead of a loop per tensor (Adam on simple_cnn, one CPU
    thread: 0.5 ms a step instead of 3.0 ms, about 6% of a step). Same update rule; the
    float roundings differ from the per-tensor loop. Elsewhere (a device or dtype without
    the kernel) the per-tensor loop."""
    params = list(params)
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    # torch's fused kernels: floating-point tensors on the CPU or CUDA
    fused = bool(tensors) and all(t.is_floating_point() and t.device.type in ("cpu", "cuda")
                                  for t in tensors) or None
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                            fused=fused)


def compute_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    class_weights: torch.Tensor | None,
    reduction: str = "mean",
    gamma: float = 2.0,
) -> torch.Tensor:
    """Cross-entropy; MSE between softmax probabilities and one-hot targets; or multi-class
    focal loss ``-w_y (1 - p_y)^gamma log p_y`` (Lin et al. 2017, class weights as alpha)."""
    if loss == "mse":
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        per_row = (torch.softmax(logits, dim=1) - target).pow(2).mean(dim=1)
    elif loss == "focal":
        log_p = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
        per_row = -((1.0 - log_p.exp()).clamp_min(0.0).pow(gamma)) * log_p
    else:
        return F.cross_entropy(logits, y, weight=class_weights, reduction=reduction)
    if class_weights is not None:
        per_row = per_row * class_weights[y]
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.mean()


#: Executor environment variable: a folder where every training rank writes the per-phase
#: time of its steps (``StepProfile``) as JSON; unset (the default), nothing is measured.
PROFILE_ENV = "SPARKVISION_PROFILE_DIR"

#: Phases of one step, in loop order ("allreduce" is the part of the backward pass spent in
#: the gradient all-reduce, "progress" the heartbeat update and progress events).
STEP_PHASES = ("data", "forward", "backward", "allreduce", "optimizer", "metrics", "progress")


def _no_comm() -> tuple[float, float]:
    return 0.0, 0.0


def _no_wait() -> float:
    return 0.0


def _runqueue_wait_s() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat; 0
    where it is not readable)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _machine_busy_s() -> float:
    """CPU seconds all processes of this machine have used so far (``/proc/stat``: user,
    nice, system, irq, softirq, steal; 0 where it is not readable)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return (sum(ticks[:3]) + sum(ticks[5:8])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return 0.0


def _ancestors_cpu_s(levels: int = 3) -> dict[str, float]:
    """CPU seconds used so far by this process's parent, grandparent, ... (``pid:name``;
    in a Spark task: the PySpark daemon, then the executor JVM, whose CPU competes with the
    training on the same host)."""
    out: dict[str, float] = {}
    pid, tick = os.getppid(), os.sysconf("SC_CLK_TCK")
    for _ in range(levels):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            break
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
        out[f"{pid}:{name}"] = (int(fields[11]) + int(fields[12])) / tick
        pid = int(fields[1])
        if pid <= 1:
            break
    return out


@dataclass
class StepProfile:
    """Opt-in time per phase of the training steps: wall (``time.perf_counter`` laps) and
    this thread's CPU (``time.thread_time``: wall minus CPU is time spent waiting or
    preempted), plus the CPU time of the process's other threads (heartbeat, event senders,
    prefetch, gloo) over the timed steps. ``comm_clock`` returns the cumulative (wall, CPU)
    seconds spent in the gradient all-reduce so far (moved out of "backward"),
    ``comm_wait_clock`` the wall seconds of them spent waiting for a slower peer.
    Profiling is off unless a caller passes one (``profile_dir`` reads ``PROFILE_ENV``)."""

    comm_clock: Callable[[], tuple[float, float]] = _no_comm
    comm_wait_clock: Callable[[], float] = _no_wait
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(STEP_PHASES + ("epoch_end",), 0.0))
    cpu_seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(STEP_PHASES, 0.0))
    steps: int = 0
    process_cpu_s: float = 0.0
    #: over the timed steps: this thread's wait for a CPU, the whole machine's busy CPU
    #: seconds, and the CPU seconds of this process's ancestors
    runqueue_wait_s: float = 0.0
    machine_busy_s: float = 0.0
    ancestors_cpu_s: dict[str, float] = field(default_factory=dict)
    _t: tuple[float, float] = (0.0, 0.0)
    _comm: tuple[float, float] = (0.0, 0.0)
    _process: float = 0.0
    _env: tuple[float, float, dict[str, float]] = (0.0, 0.0, {})

    def start(self) -> None:
        self._env = (_runqueue_wait_s(), _machine_busy_s(), _ancestors_cpu_s())
        self._process = time.process_time()
        self._comm = self.comm_clock()
        self._t = (time.perf_counter(), time.thread_time())

    def lap(self, phase: str) -> None:
        now = (time.perf_counter(), time.thread_time())
        self.seconds[phase] += now[0] - self._t[0]
        self.cpu_seconds[phase] += now[1] - self._t[1]
        self._t = now

    def lap_comm(self, phase: str) -> None:
        """Like ``lap``, with the all-reduce time spent meanwhile booked to "allreduce"."""
        now, comm = (time.perf_counter(), time.thread_time()), self.comm_clock()
        wall, cpu = comm[0] - self._comm[0], comm[1] - self._comm[1]
        self.seconds["allreduce"] += wall
        self.cpu_seconds["allreduce"] += cpu
        self.seconds[phase] += now[0] - self._t[0] - wall
        self.cpu_seconds[phase] += now[1] - self._t[1] - cpu
        self._t, self._comm = now, comm

    def stop(self) -> None:
        self.process_cpu_s += time.process_time() - self._process
        runqueue, busy, ancestors = self._env
        self.runqueue_wait_s += _runqueue_wait_s() - runqueue
        self.machine_busy_s += _machine_busy_s() - busy
        for name, cpu in _ancestors_cpu_s().items():
            if name in ancestors:
                self.ancestors_cpu_s[name] = (self.ancestors_cpu_s.get(name, 0.0)
                                              + cpu - ancestors[name])

    def to_dict(self) -> dict[str, object]:
        main_cpu = sum(self.cpu_seconds.values())
        return {"steps": self.steps,
                "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
                "cpu_seconds": {k: round(v, 6) for k, v in self.cpu_seconds.items()},
                "step_seconds": round(sum(self.seconds[k] for k in STEP_PHASES), 6),
                "allreduce_wait_s": round(self.comm_wait_clock(), 6),
                "main_thread_cpu_s": round(main_cpu, 6),
                "other_threads_cpu_s": round(self.process_cpu_s - main_cpu, 6),
                "process_cpu_s": round(self.process_cpu_s, 6),
                "runqueue_wait_s": round(self.runqueue_wait_s, 6),
                "machine_busy_cpu_s": round(self.machine_busy_s, 3),
                "ancestors_cpu_s": {k: round(v, 3) for k, v in self.ancestors_cpu_s.items()}}


def profile_dir() -> str:
    """The folder of ``PROFILE_ENV`` ("" when profiling is off)."""
    return os.environ.get(PROFILE_ENV, "").strip()


@dataclass
class EpochTotals:
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    steps: int = 0


def _batches(x: torch.Tensor, y: torch.Tensor, order: np.ndarray, b: int,
             prefetch: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(indices, images, labels) of each full mini-batch of ``order``; with ``prefetch`` the
    next batch is gathered in a background thread while this one trains (memory-mapped
    images: the page reads overlap the compute; torch's indexing releases the GIL)."""
    steps = len(order) // b

    def gather(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(order[step * b : (step + 1) * b])
        return idx, x[idx], y[idx]

    if not prefetch or steps < 2:
        for step in range(steps):
            yield gather(step)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="sparkvision-prefetch") as pool:
        pending = pool.submit(gather, 0)
        for step in range(steps):
            batch = pending.result()
            if step + 1 < steps:
                pending = pool.submit(gather, step + 1)
            yield batch


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    order: np.ndarray,
    config: TrainConfig,
    gen: torch.Generator,
    global_step: int,
    total_steps: int,
    class_weights: torch.Tensor | None,
    on_step: Callable[[int], None] | None = None,
    device: torch.device | None = None,
    profile: StepProfile | None = None,
) -> EpochTotals:
    """One pass over ``order`` (row indices) in batches of ``config.batch_size``; with
    ``profile``, the time of each phase of every step is added to it."""
    model.train()
    if config.freeze == "backbone":  # its batch-norm statistics and dropout hold still too
        net = getattr(model, "module", model)  # DDP wraps the network
        hold_backbone_still(net, head_name(net, config.num_classes))
    totals = EpochTotals()
    shift = max_shift_for(config.image_shape, config.augment)
    warmup = max(1, total_steps // (config.epochs * 2)) if config.epochs > 1 else 1
    b = config.batch_size
    # On an accelerator the epoch's loss sum and correct count stay on the device until the
    # epoch ends (no device-to-host sync per step), in float64 like the Python float of the
    # CPU path: the same roundings, hence the same sums. On the CPU, Python numbers are the
    # cheaper of the two (a few tensor ops fewer per step).
    on_device = device is not None and device.type != "cpu"
    loss_sum = torch.zeros((), dtype=torch.float64, device=device) if on_device else None
    correct = torch.zeros((), dtype=torch.int64, device=device) if on_device else None
    if profile is not None:
        profile.start()
    for step, (idx, xb_raw, yb) in enumerate(_batches(x, y, order, b, config.prefetch)):
        xb = normalize(augment_batch(xb_raw, config.augment, shift, gen),
                       config.input_mean, config.input_std)
        if device is not None and device.type != "cpu":
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        if profile is not None:
            profile.lap("data")
        logits = model(xb)
        loss = compute_loss(logits, yb, config.loss, class_weights, gamma=config.focal_gamma)
        if profile is not None:
            profile.lap("forward")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.gradient_clip_norm > 0 and config.privacy == "none":
            nn.utils.clip_grad_norm_(model.parameters(), config.gradient_clip_norm)
        if profile is not None:
            profile.lap_comm("backward")
        factor = lr_factor(config.lr_schedule, global_step + step, total_steps, warmup)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * factor * group.get("lr_scale", 1.0)
        optimizer.step()
        if profile is not None:
            profile.lap("optimizer")
        if loss_sum is None or correct is None:
            totals.loss_sum += float(loss.detach()) * len(idx)
            totals.correct += int((logits.detach().argmax(1) == yb).sum())
        else:
            loss_sum += loss.detach().to(torch.float64) * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
        totals.count += len(idx)
        totals.steps += 1
        if profile is not None:
            profile.lap("metrics")
        if on_step is not None:
            on_step(step + 1)
        if profile is not None:
            profile.lap("progress")
            profile.steps += 1
    if loss_sum is not None and correct is not None:
        totals.loss_sum, totals.correct = float(loss_sum), int(correct)
    if profile is not None:
        profile.stop()
    return totals


#: At most this many bytes of float input in one evaluation batch: 512 rows of 192x192x3
#: images would be 226 MB (and their activations several times that), which a reused
#: Python worker keeps (glibc trimming is off).
EVAL_BATCH_BYTES = 16 << 20


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    batch_size: int = 512,
    device: torch.device | None = None,
    gamma: float = 2.0,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
) -> EpochTotals:
    """Summed loss and correct count over all rows (unweighted loss), the images
    normalised with ``mean``/``std``; in batches of ``batch_size`` rows, fewer when their
    float input would pass :data:`EVAL_BATCH_BYTES` (big images)."""
    model.eval()
    totals = EpochTotals()
    row_bytes = 4 * math.prod(x.shape[1:])
    batch_size = max(1, min(batch_size, EVAL_BATCH_BYTES // max(1, row_bytes)))
    for start in range(0, len(x), batch_size):
        xb = normalize(x[start : start + batch_size], mean, std)
        yb = y[start : start + batch_size]
        if device is not None and device.type != "cpu":
            xb, yb = xb.to(device), yb.to(device)
        logits = model(xb)
        totals.loss_sum += float(compute_loss(logits, yb, loss, None, reduction="sum", gamma=gamma))
        totals.correct += int((logits.argmax(1) == yb).sum())
        totals.count += len(yb)
    return totals

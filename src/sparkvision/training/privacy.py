"""Differentially private training with Opacus (DP-SGD) across the barrier stage's ranks.

Each rank computes per-sample gradients (Opacus's ``GradSampleModule``), clips each to
``max_grad_norm`` and sums them; rank 0 alone adds Gaussian noise of standard deviation
``noise_multiplier × max_grad_norm``; the sum is all-reduced and divided by the global
batch (Opacus's ``DistributedDPOptimizer``). The noise is calibrated on the whole data set:
sampling rate = global batch / all training rows, for every step the training will take,
so that ε after the last epoch stays within ``target_epsilon`` at ``target_delta`` (RDP
accountant). Batches are seeded shuffles of fixed size, not Poisson samples: the usual
approximation (Opacus's ``poisson_sampling=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sparkvision.training.history import PrivacyRecord

ACCOUNTANT = "rdp"
#: RDP orders searched for the tightest ε: Opacus's defaults plus larger ones (small
#: sampling rates and low noise reach their optimum past 63)
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [
    64, 80, 96, 128, 160, 192, 256, 384, 512, 1024]


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP-SGD settings every rank derives identically from the same counts."""

    noise_multiplier: float
    sample_rate: float
    steps_per_epoch: int
    max_grad_norm: float
    target_epsilon: float
    target_delta: float

    def epsilon_after(self, steps: int) -> float:
        """ε spent after ``steps`` noisy steps (0 before the first)."""
        from opacus.accountants import RDPAccountant

        if steps <= 0:
            return 0.0
        accountant = RDPAccountant()
        accountant.history = [(self.noise_multiplier, self.sample_rate, steps)]
        return float(accountant.get_epsilon(delta=self.target_delta, alphas=ALPHAS))

    def record(self, epsilon: float, stopped_at_budget: bool) -> PrivacyRecord:
        """The training history's privacy record once ``epsilon`` has been spent."""
        return PrivacyRecord(
            accountant=ACCOUNTANT, epsilon=epsilon, delta=self.target_delta,
            target_epsilon=self.target_epsilon, max_grad_norm=self.max_grad_norm,
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
            stopped_at_budget=stopped_at_budget)


def plan(total_rows: int, global_batch: int, steps_per_epoch: int, epochs: int,
         target_epsilon: float, target_delta: float, max_grad_norm: float) -> PrivacyPlan:
    """The noise for ``epochs × steps_per_epoch`` steps at sampling rate
    ``global_batch / total_rows`` to end within (``target_epsilon``, ``target_delta``)."""
    from opacus.accountants.utils import get_noise_multiplier

    rate = min(1.0, global_batch / total_rows)
    sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                 sample_rate=rate, steps=steps_per_epoch * epochs,
                                 accountant=ACCOUNTANT, alphas=ALPHAS)
    return PrivacyPlan(float(sigma), rate, steps_per_epoch, max_grad_norm, target_epsilon,
                       target_delta)


def make_private(model, optimizer, batch_size: int, dp: PrivacyPlan):
    """(per-sample-gradient module in Opacus's distributed wrapper, DP optimizer over
    ``optimizer``) for a process group that is already up."""
    import warnings

    from opacus import GradSampleModule
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
    from opacus.optimizers import DistributedDPOptimizer

    # Opacus's per-sample hooks fire on the first layer, whose input needs no gradient
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    wrapped = DPDDP(GradSampleModule(model, loss_reduction="mean"))
    private = DistributedDPOptimizer(
        optimizer, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
        expected_batch_size=batch_size, loss_reduction="mean")
    return wrapped, private

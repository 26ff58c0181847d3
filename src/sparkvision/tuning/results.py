"""What a finished study leaves besides ``trials.json``: the best trial's model in
``out/best`` (the other trials' models dropped) and Optuna's plots as PNGs."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def keep_best(study, out: Path) -> tuple[str | None, dict[str, Any] | None, float | None]:
    """Copy the best trial's model to ``out/best``; drop the other trials' models."""
    try:
        best = study.best_trial
    except ValueError:  # no complete trial
        return None, None, None
    source = out / "trials" / f"trial-{best.number}"
    target = out / "best"
    if source.exists():
        tmp = out / "best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        for folder in (out / "trials").iterdir():
            if folder != source:
                shutil.rmtree(folder, ignore_errors=True)
    return (str(target) if target.exists() else None), dict(best.params), float(best.value)


def write_plots(study, out: Path) -> list[str]:
    """Optuna's matplotlib optimisation history and parameter importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written = []
    for name, plot in (("optimization_history.png", ovm.plot_optimization_history),
                       ("param_importances.png", ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental-API and importance notes
                ax: Any = plot(study)  # one Axes, or an array of them
            fig: Any = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.tight_layout()
            fig.savefig(out / name, dpi=100)
            plt.close(fig)
            written.append(str(out / name))
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            log.info("plot %s skipped: %s", name, exc)  # e.g. importances need 2+ trials
    return written

"""What the driver does with the training's progress events (they arrive through
``training.transport``): a bar over all steps, a log line per epoch, and the user's
``onEpochEnd`` callback, whose truthy answer stops the training after that epoch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sparkvision.training.transport import Event

log = logging.getLogger(__name__)


class ProgressBar:
    """Driver-side view of the events: a bar over all steps (a live bar on a TTY, plain
    periodic lines otherwise, nothing when quiet — ``sparkvision.display``) plus log lines."""

    def __init__(
        self, epochs: int, on_epoch_end: Callable[[Event], Any] | None = None,
        show: bool = True,
    ) -> None:
        self.epochs = epochs
        self.on_epoch_end = on_epoch_end
        self.show = show
        self.events: list[Event] = []
        self._bar: Any = None

    def __call__(self, event: Event) -> bool:
        """Handle one event; True asks training to stop after this epoch."""
        self.events.append(event)
        kind = event.get("type")
        if kind == "start" and self.show:
            from sparkvision.display import progress

            if self._bar is not None:  # a retried stage starts again
                self._bar.close()
            total = int(event["steps_per_epoch"]) * self.epochs
            self._bar = progress(total, "train", unit="step",
                                 initial=int(event["steps_per_epoch"])
                                 * int(event.get("start_epoch", 0)))
        elif kind == "step" and self._bar is not None:
            target = int(event["global_step"])
            self._bar.update(max(0, target - self._bar.n))
        elif kind == "epoch":
            log.info(
                "epoch %s/%s train_loss=%.4f val_loss=%s val_accuracy=%s (%.1fs)",
                event["epoch"], self.epochs, event["train_loss"], event.get("val_loss"),
                event.get("val_accuracy"), event["seconds"],
            )
            if self._bar is not None:
                val_acc = event.get("val_accuracy")
                self._bar.set_postfix(
                    epoch=f"{event['epoch']}/{self.epochs}", loss=f"{event['train_loss']:.3f}",
                    val_acc=None if val_acc is None else f"{val_acc:.4f}",
                )
            if self.on_epoch_end is not None:
                return bool(self.on_epoch_end(event))
        return False

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

"""`sparkvision train` and `sparkvision predict` (filled in by the training layer)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_train_commands(sub, common: Callable[[argparse.ArgumentParser], None]) -> None:
    return None

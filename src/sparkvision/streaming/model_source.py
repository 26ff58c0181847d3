"""The model a stream serves: loaded from a folder and re-loaded when a newer one is moved
there (hot swap), or fixed. ``version`` says which model served a row."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def weights_version(weights: bytes) -> str:
    """The content hash that names a model version (12 hex digits of SHA-1)."""
    return hashlib.sha1(weights).hexdigest()[:12]


class ModelSource:
    """``current()`` → (model, version). With a folder, the weights file's identity (inode,
    size, mtime) is checked at every call and a changed folder is loaded; a folder caught
    half-written keeps the previous model until the next call."""

    def __init__(self, model: Any, backend: str | None = None, trust_code: bool = False) -> None:
        self.backend = backend
        self.trust_code = trust_code
        self.folder: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        if isinstance(model, str | os.PathLike):
            self.folder = os.fspath(model)
            self._model, self._version = self._load()
            self._stamp = self._current_stamp()
        else:
            self._model, self._version = model, weights_version(model.weights)
        self._model = self._with_backend(self._model)

    def _with_backend(self, model):
        return model.copy().setInferenceBackend(self.backend) if self.backend else model

    def _weights_path(self) -> str:
        from sparkvision.ml.model import WEIGHTS_FILE

        assert self.folder is not None
        return os.path.join(self.folder, WEIGHTS_FILE)

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._weights_path())
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self):
        from sparkvision.ml.model import ImageClassificationModel

        assert self.folder is not None
        model = ImageClassificationModel.load(self.folder, trust_code=self.trust_code)
        return model, weights_version(model.weights)

    def current(self):
        if self.folder is not None:
            stamp = self._current_stamp()
            if stamp is not None and stamp != self._stamp:
                try:
                    model, version = self._load()
                except Exception as exc:  # noqa: BLE001 - mid-swap: keep serving the old one
                    log.warning("model folder %s changed but does not load yet (%s); "
                                "serving %s", self.folder, exc, self._version)
                else:
                    if version != self._version:
                        log.warning("stream: model %s → %s", self._version, version)
                    self._model, self._stamp = self._with_backend(model), stamp
                    self._version = version
        return self._model, self._version

"""Safe model loading, checked on the driver before any inference job: damaged, tampered or
mismatched weights and untrusted network code are one clear line and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sparkvision.cli import main
from sparkvision.errors import ModelLoadError, UntrustedCodeError
from sparkvision.ml.model import ImageClassificationModel


def _copy(trained_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(trained_dir, out, ignore=shutil.ignore_patterns("evaluation"))
    return out


def _edit_metadata(model: Path, change) -> None:
    (part,) = [p for p in (model / "metadata").glob("part-*") if not p.name.startswith(".")]
    meta = json.loads(part.read_text())
    change(meta)
    part.write_text(json.dumps(meta) + "\n")
    for crc in (model / "metadata").glob(".*.crc"):
        crc.unlink()


def _predict_fails(model: Path, data: Path, tmp_path: Path, capsys, *flags: str) -> str:
    code = main(["predict", str(model), str(data), "--out", str(tmp_path / "p.parquet"),
                 *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not (tmp_path / "p.parquet").exists()
    return err[0]


def test_truncated_weights(trained_dir, digits_dir, tmp_path, capsys):
    model = _copy(trained_dir, tmp_path)
    weights = model / "weights.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    line = _predict_fails(model, digits_dir, tmp_path, capsys)
    assert f"has {size // 2} bytes but the model was saved with {size}" in line


def test_tampered_weights_same_size(trained_dir, digits_dir, tmp_path, capsys):
    model = _copy(trained_dir, tmp_path)
    weights = model / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x40  # one bit of one float
    weights.write_bytes(bytes(data))
    line = _predict_fails(model, digits_dir, tmp_path, capsys)
    assert "does not match the SHA-256 recorded" in line


def test_bad_header_and_wrong_shapes_without_a_recorded_hash(trained_dir, digits_dir,
                                                             tmp_path, capsys):
    """A folder saved before hashes were recorded still gets the header and shape checks."""
    from safetensors.torch import save

    from sparkvision.models.registry import build_model

    model = _copy(trained_dir, tmp_path)
    _edit_metadata(model, lambda m: m.pop("weights"))
    weights = model / "weights.safetensors"
    weights.write_bytes(b"\xff" * 64)
    assert "is not a readable safetensors file" in _predict_fails(
        model, digits_dir, tmp_path, capsys)
    other = build_model("lenet5", 10, (8, 8, 1)).state_dict()
    weights.write_bytes(save({k: v.contiguous() for k, v in other.items()}))
    line = _predict_fails(model, digits_dir, tmp_path, capsys)
    assert "does not fit the network 'cnn' for 10 classes and input (8, 8, 1)" in line
    with pytest.raises(ModelLoadError):
        ImageClassificationModel.load(str(model))


def test_a_network_import_path_needs_trust_code(trained_dir, digits_dir, tmp_path, capsys):
    model = _copy(trained_dir, tmp_path)
    _edit_metadata(model, lambda m: m["paramMap"].update(
        model="sparkvision.models.networks:small_cnn"))  # the same network, as code
    line = _predict_fails(model, digits_dir, tmp_path, capsys)
    assert "uses the network 'sparkvision.models.networks:small_cnn'" in line
    assert "--trust-code" in line
    with pytest.raises(UntrustedCodeError):
        ImageClassificationModel.load(str(model))
    out = tmp_path / "trusted.parquet"
    assert main(["predict", str(model), str(digits_dir), "--out", str(out),
                 "--trust-code"]) == 0
    assert ImageClassificationModel.load(str(model), trust_code=True).getModel() == (
        "sparkvision.models.networks:small_cnn")


def test_train_builds_a_custom_network_on_the_driver_first(digits_dir, tmp_path, capsys):
    """A builder that raises fails before any Spark job (no barrier stage, no retries)."""
    code = main(["train", str(digits_dir), "--out", str(tmp_path / "m"), "--epochs", "1",
                 "--model", "tests.nets:overflowing_bad"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "has no callable 'overflowing_bad'" in err[0]
    code = main(["train", str(digits_dir), "--out", str(tmp_path / "m"), "--epochs", "1",
                 "--model", "tests.nets:returns_a_string"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "returned str, not an nn.Module" in err[0]

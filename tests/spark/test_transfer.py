"""Transfer learning on real data: a network trained on MNIST starts a digits classifier
(`initFrom` / `--init-from`), its backbone frozen or not; weights from a safetensors file
(`--init-weights`, strict or with a report); every bad input is one clear error."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparkvision import ImageClassifier, load_prepared
from sparkvision.cli import main
from sparkvision.errors import InvalidParameterError
from sparkvision.ml.evaluator import ImageClassificationEvaluator
from sparkvision.ml.transfer import starting_weights
from sparkvision.models.parts import is_head_key

pytestmark = pytest.mark.slow
HEAD = "5"  # cnn: Sequential(features, Dropout, Linear, ReLU, Dropout, Linear)


def _accuracy(model, df) -> float:
    return ImageClassificationEvaluator(metricName="accuracy").evaluate(model.transform(df))


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_fine_tuning_from_mnist_beats_training_from_scratch(spark, mnist_model_dir,
                                                            digits28_dir):
    train = load_prepared(spark, str(digits28_dir), "train")
    test = load_prepared(spark, str(digits28_dir), "test")
    common = {"model": "cnn", "epochs": 1, "numWorkers": 2, "seed": 5}
    scratch = ImageClassifier(**common).fit(train)
    tuned = ImageClassifier(initFrom=str(mnist_model_dir), backboneLrScale=0.5,
                            **common).fit(train)
    acc_scratch, acc_tuned = _accuracy(scratch, test), _accuracy(tuned, test)
    assert acc_tuned >= acc_scratch + 0.1, (acc_scratch, acc_tuned)
    transfer = tuned.history.transfer
    assert transfer.backbone_lr_scale == 0.5 and transfer.head == HEAD
    # digits and MNIST both name their classes 0..9: the head is kept
    assert transfer.init.loaded == len(load_file(str(mnist_model_dir / "weights.safetensors")))
    assert not transfer.init.head_reinitialised and not transfer.init.missing
    assert scratch.history.transfer.init is None


def test_frozen_backbone_is_bit_identical_after_training_through_the_cli(
        mnist_model_dir, digits28_dir, tmp_path, capsys):
    out = tmp_path / "frozen"
    assert main(["train", str(digits28_dir), "--out", str(out), "--init-from",
                 str(mnist_model_dir), "--freeze", "backbone", "--epochs", "1",
                 "--workers", "2", "--json"]) == 0  # no --model: the folder's network
    result = _last_json(capsys)
    assert result["transfer"]["freeze"] == "backbone" and result["transfer"]["head"] == HEAD
    assert result["test_accuracy"] > 0.5
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Transfer learning" in page and str(mnist_model_dir) in page
    source = load_file(str(mnist_model_dir / "weights.safetensors"))
    trained = load_file(str(out / "weights.safetensors"))
    assert set(source) == set(trained)
    for key in source:
        if is_head_key(key, HEAD):
            assert not torch.equal(source[key], trained[key]), key
        else:  # weights and batch-norm statistics alike
            assert torch.equal(source[key], trained[key]), key


def test_init_weights_strict_fails_lenient_loads_what_fits_and_says_so(
        mnist_model_dir, digits28_dir, tmp_path, capsys):
    state = load_file(str(mnist_model_dir / "weights.safetensors"))
    state[f"{HEAD}.weight"] = torch.zeros(3, state[f"{HEAD}.weight"].shape[1])  # a 3-class head
    state["projection.weight"] = torch.zeros(4, 4)
    weights = tmp_path / "pretrained.safetensors"
    save_file(state, str(weights))
    argv = ["train", str(digits28_dir), "--out", str(tmp_path / "m"), "--model", "cnn",
            "--init-weights", str(weights), "--epochs", "1", "--workers", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "initWeights" in err[0] and "5.weight" in err[0], err
    assert "--init-strict false" in err[0]
    assert main([*argv, "--init-strict", "false"]) == 0
    out = capsys.readouterr().out
    assert "started from:" in out and "1 unexpected (ignored): projection.weight" in out
    assert "1 shape-mismatched (kept as initialised): 5.weight (3, 128) != (10, 128)" in out


def test_bad_transfer_inputs_are_clear_errors(spark, mnist_model_dir, digits28_dir,
                                              trained_dir, tmp_path, capsys):
    classes = [str(i) for i in range(10)]
    # a folder that is not a model
    (tmp_path / "not-a-model").mkdir()
    assert main(["train", str(digits28_dir), "--out", str(tmp_path / "m"), "--init-from",
                 str(tmp_path / "not-a-model")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "init-from" in err[0] and "not a sparkvision model" in err[0]
    # --freeze on a network without a recognisable head (before any Spark job)
    assert main(["train", str(digits28_dir), "--out", str(tmp_path / "m"), "--model",
                 "tests.nets:conv_head", "--freeze", "backbone"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no recognisable backbone/head split" in err[0], err
    # another network, another input size, both Params at once
    with pytest.raises(InvalidParameterError, match="a 'cnn' network, not 'resnet8'"):
        starting_weights("resnet8", classes, (28, 28, 1), "", str(mnist_model_dir), True,
                         "none", 1.0)
    with pytest.raises(InvalidParameterError, match=r"trained on images \(8, 8, 1\).*"
                       "same --image-size"):
        starting_weights("cnn", classes, (28, 28, 1), "", str(trained_dir), True, "none", 1.0)
    with pytest.raises(InvalidParameterError, match="not both"):
        ImageClassifier(initFrom="a", initWeights="b").validateParams()
    with pytest.raises(InvalidParameterError, match="initWeights.*no such file"):
        starting_weights("cnn", classes, (28, 28, 1), str(tmp_path / "x.safetensors"), "",
                         True, "none", 1.0)
    pickled = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(1)}, str(pickled))
    with pytest.raises(InvalidParameterError, match="not a readable safetensors file"):
        starting_weights("cnn", classes, (28, 28, 1), str(pickled), "", True, "none", 1.0)
    # other class names: the head is re-initialised, the backbone loaded
    state, info = starting_weights("cnn", [f"c{i}" for i in range(10)], (28, 28, 1), "",
                                   str(mnist_model_dir), True, "none", 1.0)
    assert info.init.head_reinitialised
    assert info.init.loaded == len(load_file(str(mnist_model_dir / "weights.safetensors"))) - 2


def test_timm_networks_need_an_importable_timm(tmp_path, digits28_dir, capsys):
    assert main(["train", str(digits28_dir), "--out", str(tmp_path / "m"), "--model",
                 "timm:no_such_net_x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    try:
        import timm  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or its torchvision does not load
        expected = "needs the 'zoo' extra (timm cannot be imported"
    else:
        expected = "timm has no architecture 'no_such_net_x'"
    assert len(err) == 1 and expected in err[0], err

"""Zoo networks trained on Spark (2 workers): timm, torchvision and ONNX-imported networks
on photos, fine-tuning from a pretrained file with a frozen backbone, and the exported
graph of a timm network. Runs in the zoo environment (`make test-zoo`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sparkvision import ImageClassifier
from sparkvision.cli import main

pytestmark = pytest.mark.zoo

#: pretraining photos, and the new photos the fine-tuning task tells apart
PRETRAIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
                   "retina")
TARGET_PHOTOS = ("china", "flower", "hubble_deep_field")
FEW_SHOT_PHOTOS = ("rocket", "astronaut", "coffee")


def _photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    return getattr(skimage.data, name)()


def photo_crops(names, per_class: int, size: int, seed: int):
    """Seeded random crops (25–70% of the short side, random position and flip) of real
    photos, resized to ``size``; label = which photo."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(names):
        photo = Image.fromarray(_photo(name)).convert("RGB")
        w, h = photo.size
        for _ in range(per_class):
            side = int(min(w, h) * rng.uniform(0.25, 0.7))
            x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = photo.crop((x0, y0, x0 + side, y0 + side)).resize(
                (size, size), Image.Resampling.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            images.append(np.asarray(crop, dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def frame(spark, images: np.ndarray, labels: np.ndarray):
    rows = [(i, bytearray(img.tobytes()), int(y))
            for i, (img, y) in enumerate(zip(images, labels, strict=True))]
    return spark.createDataFrame(rows, "id long, image binary, label long").repartition(2)


def accuracy(model, df) -> float:
    return float(model.transform(df).selectExpr(
        "avg(cast(prediction = label as double))").first()[0])


@pytest.fixture(scope="module")
def faces64(spark, tmp_path_factory):
    """The built-in faces (face / non-face, grayscale), prepared at 64x64, RGB."""
    out = tmp_path_factory.mktemp("faces64")
    assert main(["prepare", "faces", "--image-size", "64", "--channels", "3",
                 "--out", str(out), "-q"]) == 0
    return out


@pytest.mark.parametrize("network, extra", [
    ("timm:resnet18", []),
    ("torchvision:mobilenet_v3_small", []),
    ("timm:vit_tiny_patch16_224", ["--lr", "0.0005"]),
])
def test_zoo_network_trains_on_faces_and_predicts(faces64, network, extra, tmp_path,
                                                  capsys):
    """One epoch on 2 workers through the CLI, then `predict` on the test split."""
    model_dir = tmp_path / "model"
    assert main(["train", str(faces64), "--model", network, "--epochs", "1", "--workers",
                 "2", "--batch-size", "16", "--augment", "photo", *extra,
                 "--out", str(model_dir), "--json", "-q"]) == 0
    capsys.readouterr()
    meta = json.loads((model_dir / "metadata" / "part-00000").read_text())
    assert meta["paramMap"]["model"] == network
    assert meta["paramMap"]["imageShape"] == [64, 64, 3]
    assert len(meta["paramMap"]["inputMean"]) == 3  # dataset statistics, stored
    out = tmp_path / "pred.parquet"
    assert main(["predict", str(model_dir), str(faces64), "--split", "test",
                 "--out", str(out), "--json", "-q"]) == 0
    predicted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert predicted["rows"] > 0


def _pretrained_resnet(path, seed: int = 0) -> dict[str, torch.Tensor]:
    """resnet18 pretrained here, independently of sparkvision (plain PyTorch + timm), on
    crops of six photos at ImageNet normalisation; saved as timm saves a state dict."""
    import timm

    torch.manual_seed(seed)
    x, y = photo_crops(PRETRAIN_PHOTOS, 40, 64, seed=1)
    net = timm.create_model("resnet18", num_classes=len(PRETRAIN_PHOTOS))
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    xt = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(4):
        for idx in torch.randperm(len(xt)).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save(state, path)
    return state


def test_pretrained_frozen_backbone_is_bit_identical_and_beats_scratch(spark, tmp_path):
    from safetensors.torch import load

    file = tmp_path / "resnet18-photos.pth"
    state = _pretrained_resnet(file)
    # a few-shot task in the pretraining's domain: new crops of three of its photos (the
    # head is new: 3 classes in another order); equal epochs, equal settings
    x, y = photo_crops(FEW_SHOT_PHOTOS, 12, 64, seed=2)
    xt, yt = photo_crops(FEW_SHOT_PHOTOS, 20, 64, seed=3)
    train, test = frame(spark, x, y), frame(spark, xt, yt)
    common = dict(model="timm:resnet18", imageShape=[64, 64, 3], epochs=2, numWorkers=2,
                  batchSize=8, seed=0, augment="none", learningRate=0.01)
    tuned = ImageClassifier(pretrained=str(file), freeze="backbone", **common).fit(train)
    scratch = ImageClassifier(**common).fit(train)

    weights = load(tuned.weights)
    backbone = [k for k in state if not k.startswith("fc.")]
    assert len(backbone) > 100
    for key in backbone:  # weights and batch-norm statistics, bit for bit
        assert torch.equal(weights[key], state[key]), key
    assert not torch.equal(weights["fc.weight"][:1], state["fc.weight"][:1])
    assert tuple(weights["fc.weight"].shape) == (len(FEW_SHOT_PHOTOS), 512)
    # ImageNet's statistics from the network's pretrained config, stored with the model
    assert tuned.getInputMean() == pytest.approx([0.485, 0.456, 0.406])
    init = tuned.history.transfer.init
    assert init is not None and init.loaded == len(backbone)

    acc_tuned, acc_scratch = accuracy(tuned, test), accuracy(scratch, test)
    assert acc_tuned > acc_scratch + 0.1, (acc_tuned, acc_scratch)
    assert acc_tuned > 0.6, acc_tuned


def test_exported_onnx_of_a_timm_model_predicts_like_transform(spark, tmp_path):
    import onnxruntime as ort

    x, y = photo_crops(TARGET_PHOTOS, 8, 32, seed=4)
    df = frame(spark, x, y)
    model = ImageClassifier(model="timm:resnet18", imageShape=[32, 32, 3], epochs=1,
                            numWorkers=2, batchSize=8, seed=0).fit(df)
    assert len(model.getInputMean()) == 3 and model.getInputMean() != [0.5, 0.5, 0.5]
    path = tmp_path / "resnet18.onnx"
    model.export(str(path), format="onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"image": x})[0]
    for backend in ("torch", "onnxruntime"):
        rows = model.setInferenceBackend(backend).transform(df).orderBy("id").collect()
        want = np.stack([r["probability"].toArray() for r in rows])
        assert np.allclose(want, probs, atol=1e-4), backend
        assert [int(r["prediction"]) for r in rows] == np.argmax(probs, 1).tolist()


def test_onnx_file_from_another_exporter_fine_tunes(spark, tmp_path):
    """A torchvision network exported by torch.onnx (not our exporter) imports with
    model='onnx:FILE', keeps its weights (all but the replaced head) and fine-tunes."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    path = tmp_path / "mobilenet.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    x, y = photo_crops(TARGET_PHOTOS, 8, 32, seed=5)
    model = ImageClassifier(model=f"onnx:{path}", imageShape=[32, 32, 3], epochs=1,
                            numWorkers=2, batchSize=8, seed=0, augment="photo").fit(
                                frame(spark, x, y))
    assert model.numClasses == len(TARGET_PHOTOS)
    preds = model.transform(frame(spark, x, y)).select("prediction").collect()
    assert len(preds) == len(x)
    assert model.history.epochs and model.history.epochs[-1].train_loss > 0

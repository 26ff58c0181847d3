"""Fixtures of the zoo tests: "pretrained" weights made here (nothing is downloaded): a
zoo network built independently of sparkvision with seeded weights and saved the ways timm,
torchvision and the Hugging Face hub save them. Imports of timm/torchvision stay inside the
fixtures, so collecting this folder in the default environment imports nothing."""

from __future__ import annotations

from pathlib import Path

import pytest


def seeded(build, seed: int = 0):
    """``build()`` under a fixed torch seed, with every batch-norm statistic set to seeded
    random values too (so a buffer that did not load shows)."""
    import torch

    torch.manual_seed(seed)
    net = build()
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.is_floating_point() and "running" in name:
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return net.eval()


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def resnet18_state(zoo_dir):
    """timm's resnet18 (1000 classes, seeded) as a state dict, and saved as .safetensors,
    as a .pth of torch.save({"state_dict": ...}) and in a Hugging Face hub cache layout."""
    import timm
    import torch
    from safetensors.torch import save_file

    state = seeded(lambda: timm.create_model("resnet18", pretrained=False)).state_dict()
    state = {k: v.contiguous() for k, v in state.items()}
    st = zoo_dir / "resnet18.safetensors"
    save_file(state, str(st))
    pth = zoo_dir / "resnet18.pth"
    torch.save({"state_dict": state, "epoch": 3}, pth)
    # the hub cache: models--timm--NAME/{refs/main, snapshots/HASH/model.safetensors → blob}
    repo = zoo_dir / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    blob = repo / "blobs" / "d63eafa0"
    blob.write_bytes(st.read_bytes())
    (snapshot / "model.safetensors").symlink_to(blob)
    (snapshot / "config.json").write_text('{"architecture": "resnet18"}')
    return {"state": state, "safetensors": st, "pth": pth, "hub": zoo_dir / "hub",
            "repo": repo, "snapshot": snapshot}


@pytest.fixture(scope="session")
def mobilenet_onnx(zoo_dir):
    """torchvision's mobilenet_v3_small (seeded, 1000 classes) exported by torch's own ONNX
    exporter (not ours) at opset 17, and the network it came from."""
    import torch
    import torchvision

    net = seeded(lambda: torchvision.models.mobilenet_v3_small(weights=None))
    path = zoo_dir / "mobilenet_v3_small.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["x"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n"}})
    return path, net

"""Full-size FR architectures: public checkpoint formats load exactly, and the loaded networks compute the same thing.

Each round trip writes a checkpoint the way the public code does (``torch.save(model.state_dict())``), reads it
back through our loader and compares embeddings with the module it was written from, and with a functional
re-implementation of the public forward pass written from the state dict alone (so a model whose keys fit but
whose wiring differs — stride on the wrong conv, a missing shortcut — would fail).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from facenet_pytorch import InceptionResnetV1
from safetensors.torch import save_file
from torch import nn

from opom.models.arch import checkpoint as ckpt
from opom.models.arch import facenet, iresnet, irse, mobilefacenet


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics / affines and PReLU slopes, so that loading the wrong tensor shows.

    Frozen affines (IResNet's ``features.weight``, fixed at 1 in the published checkpoints) are left alone."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
            if m.affine:
                if m.weight.requires_grad:
                    m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        elif isinstance(m, nn.PReLU):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.3)
    return model.eval()


def _images(n: int = 2, size: int = 112, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _meta(build, *args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build(*args, **kwargs)


# ---- functional references written from the public forward passes ---------------------------------------------


def _bn(sd, x, p, eps=1e-5):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, eps)


def _prelu(sd, x, p):
    return F.prelu(x, sd[f"{p}.weight"])


def _ref_iresnet(sd, x, layers):
    """arcface_torch IResNet.forward: stem, blocks (stride on conv2, downsample on each stage's first), head."""
    x = _prelu(sd, _bn(sd, F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"), "prelu")
    for s, n in enumerate(layers, 1):
        for j in range(n):
            p, stride = f"layer{s}.{j}", 2 if j == 0 else 1
            y = F.conv2d(_bn(sd, x, f"{p}.bn1"), sd[f"{p}.conv1.weight"], padding=1)
            y = F.conv2d(_prelu(sd, _bn(sd, y, f"{p}.bn2"), f"{p}.prelu"), sd[f"{p}.conv2.weight"], stride=stride,
                         padding=1)
            y = _bn(sd, y, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(sd, F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            x = x + y
    x = F.linear(_bn(sd, x, "bn2").flatten(1), sd["fc.weight"], sd["fc.bias"])
    return _bn(sd, x, "features")


def _ref_irse(sd, x, stages=irse.STAGES[50]):
    """face.evoLVe Backbone.forward (after its built-in normalisation): IR units, shortcut MaxPool(1, s) or conv."""
    x = _prelu(sd, _bn(sd, F.conv2d(x, sd["input_layer.0.weight"], padding=1), "input_layer.1"), "input_layer.2")
    unit = 0
    for _, _, n in stages:
        for j in range(n):
            p, stride = f"body.{unit}", 2 if j == 0 else 1
            y = F.conv2d(_bn(sd, x, f"{p}.res_layer.0"), sd[f"{p}.res_layer.1.weight"], padding=1)
            y = F.conv2d(_prelu(sd, y, f"{p}.res_layer.2"), sd[f"{p}.res_layer.3.weight"], stride=stride, padding=1)
            y = _bn(sd, y, f"{p}.res_layer.4")
            if f"{p}.shortcut_layer.0.weight" in sd:
                x = _bn(sd, F.conv2d(x, sd[f"{p}.shortcut_layer.0.weight"], stride=stride), f"{p}.shortcut_layer.1")
            else:
                x = x[:, :, ::stride, ::stride]
            x, unit = x + y, unit + 1
    x = F.linear(_bn(sd, x, "output_layer.0").flatten(1), sd["output_layer.3.weight"], sd["output_layer.3.bias"])
    return _bn(sd, x, "output_layer.4")


def _ref_mbf(sd, x):
    """arcface_torch MobileFaceNet.forward for blocks=(1, 4, 6, 2); conv groups follow from the weight shapes."""

    def block(x, p, stride=1, pad=0, act=True):
        w = sd[f"{p}.layers.0.weight"]
        y = _bn(sd, F.conv2d(x, w, stride=stride, padding=pad, groups=x.shape[1] // w.shape[1]), f"{p}.layers.1")
        return _prelu(sd, y, f"{p}.layers.2") if act else y

    def depthwise(x, p, stride):
        y = block(x, f"{p}.layers.0")
        y = block(y, f"{p}.layers.1", stride, 1)
        return block(y, f"{p}.layers.2", act=False)

    x = block(block(x, "layers.0", 2, 1), "layers.1", 1, 1)
    for i, units in ((2, 4), (4, 6), (6, 2)):
        x = depthwise(x, f"layers.{i}", 2)
        for u in range(units):
            x = x + depthwise(x, f"layers.{i + 1}.layers.{u}", 1)
    x = block(block(x, "conv_sep"), "features.layers.0", act=False).flatten(1)
    return _bn(sd, F.linear(x, sd["features.layers.2.weight"]), "features.layers.3")


# ---- arcface_torch IResNet -------------------------------------------------------------------------------------


def test_iresnet18_round_trip_matches_source_and_reference(tmp_path):
    source = _randomize(iresnet.iresnet18(), seed=3)
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)

    model = iresnet.load_iresnet(path)  # depth inferred from the keys
    assert set(model.state_dict()) == set(_meta(iresnet.iresnet18).state_dict())
    assert not model.training and not model.features.weight.requires_grad
    x = _images(1)
    expected = source(x)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
    _close(_ref_iresnet(source.state_dict(), x, iresnet.LAYERS["iresnet18"]), expected)
    assert expected.shape == (1, 512)


def test_iresnet_keys_are_the_published_ones():
    r50 = _shapes(_meta(iresnet.iresnet50))
    assert len(r50) == 475  # 24 blocks x 18 + 4 downsamples x 6 + stem 7 + head 12
    assert r50["fc.weight"] == (512, 25088) and r50["fc.bias"] == (512,)
    assert r50["conv1.weight"] == (64, 3, 3, 3) and r50["prelu.weight"] == (64,)
    assert r50["layer1.0.downsample.0.weight"] == (64, 64, 1, 1)
    assert r50["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert r50["layer3.13.conv2.weight"] == (256, 256, 3, 3) and "layer3.14.conv1.weight" not in r50
    for key in ("bn1.running_mean", "layer1.0.bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn2.weight",
                "layer1.0.prelu.weight", "layer1.0.bn3.weight", "layer1.0.downsample.1.running_var",
                "layer1.0.bn1.num_batches_tracked", "bn2.weight", "features.weight", "features.bias",
                "features.running_mean", "features.running_var"):
        assert key in r50, key
    assert "layer1.1.downsample.0.weight" not in r50
    r100 = _shapes(_meta(iresnet.iresnet100))
    assert len(r100) == 925 and "layer2.12.conv1.weight" in r100 and "layer3.29.bn3.weight" in r100
    assert len(_meta(iresnet.iresnet34).state_dict()) == 331
    for name, layers in iresnet.LAYERS.items():
        assert iresnet.infer_iresnet(_meta(iresnet.IRESNETS[name]).state_dict()) == name, layers


def test_iresnet_dfanet_sites():
    model = _meta(iresnet.iresnet18)
    sites = model.dfanet_sites()
    assert len(sites) == 1 + 2 * 8 and sites[0] is model.conv1
    assert sites[1] is model.layer1[0].conv1 and sites[2] is model.layer1[0].conv2
    assert all(isinstance(s, nn.Conv2d) and s.kernel_size == (3, 3) for s in sites)


# ---- face.evoLVe IR / IR-SE and OPOM's DFANet variant ----------------------------------------------------------


class _DropUnit(nn.Module):
    """bottleneck_IR of OPOM's model_irse_drop.py (module tree only as far as the state dict is concerned)."""

    def __init__(self, cin, depth, stride, p):
        super().__init__()
        self.shortcut_layer = (nn.MaxPool2d(1, stride) if cin == depth else
                               nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)))
        self.res_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.Dropout(p),
                                       nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
                                       nn.Dropout(p), nn.BatchNorm2d(depth))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class _DropIR50(nn.Module):
    """IR_50_drop: Dropout after the input conv and after both convs of each unit."""

    def __init__(self, p=0.1):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Dropout(p), nn.BatchNorm2d(64),
                                         nn.PReLU(64))
        units = []
        for cin, depth, n in irse.STAGES[50]:
            units += [_DropUnit(cin, depth, 2, p)] + [_DropUnit(depth, depth, 1, p) for _ in range(n - 1)]
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(), nn.Flatten(), nn.Linear(25088, 512),
                                          nn.BatchNorm1d(512))

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(x)))


@pytest.fixture(scope="module")
def ir50_source():
    """A face.evoLVe IR_50 with random weights and statistics (built once: IR-50 is slow on a busy CPU)."""
    with torch.no_grad():
        return _randomize(irse.IR_50(), seed=5)


def _dropout_variant(source: nn.Module) -> _DropIR50:
    """An IR_50_drop carrying ``source``'s weights, loaded the way OPOM's gen_privacy_torch.py does (renamed keys)."""
    drop = _meta(_DropIR50, p=0.1)
    drop.load_state_dict(irse.remap_evolve_to_dfanet(source.state_dict()), strict=True, assign=True)
    return drop.eval()


def test_ir50_round_trip_matches_source_and_reference(tmp_path, ir50_source):
    source = ir50_source
    path = tmp_path / "Backbone_IR_50_Epoch_125_checkpoint.pth"
    torch.save(source.state_dict(), path)

    model = irse.load_irse(path)
    assert isinstance(model, irse.IRSE) and (model.num_layers, model.mode, model.input_size) == (50, "ir", 112)
    loaded, written = model.state_dict(), source.state_dict()
    assert loaded.keys() == written.keys() and all(torch.equal(loaded[k], written[k]) for k in written)
    # same class, same tensors: the output comparison that matters (IR-50 forwards are slow on a busy CPU) is the
    # one against the reference; the loaded-vs-saving-module comparison is in the DFANet test below
    x = _images(1, seed=2) * 16  # (x - 127.5) * 0.078125 spans about [-10, 10]
    _close(model(x), _ref_irse(written, x))


def test_irse_keys_are_the_published_ones():
    ir50 = _shapes(_meta(irse.IR_50))
    assert len(ir50) == 349  # 24 units x 13 + 3 conv shortcuts x 6 + input 7 + output 12
    assert ir50["input_layer.0.weight"] == (64, 3, 3, 3) and ir50["input_layer.2.weight"] == (64,)
    assert ir50["body.23.res_layer.4.weight"] == (512,) and "body.24.res_layer.0.weight" not in ir50
    assert ir50["body.0.res_layer.1.weight"] == (64, 64, 3, 3) and ir50["body.0.res_layer.2.weight"] == (64,)
    assert ir50["body.3.shortcut_layer.0.weight"] == (128, 64, 1, 1)
    assert not any(k.startswith("body.0.shortcut_layer") for k in ir50)  # MaxPool2d(1, 2): no weights
    assert ir50["output_layer.3.weight"] == (512, 25088) and "output_layer.4.running_var" in ir50
    se50 = _shapes(_meta(irse.IR_SE_50))
    assert len(se50) == 349 + 24 * 2 and se50["body.0.res_layer.5.fc1.weight"] == (4, 64, 1, 1)
    assert se50["body.23.res_layer.5.fc2.weight"] == (512, 32, 1, 1)
    assert len(_meta(irse.IR_101).state_dict()) == 674 and len(_meta(irse.IR_152).state_dict()) == 687
    assert _shapes(_meta(irse.IR_50, 224))["output_layer.3.weight"] == (512, 512 * 14 * 14)
    expected = {"IR_50": (50, "ir"), "IR_101": (100, "ir"), "IR_152": (152, "ir"), "IR_SE_50": (50, "ir_se"),
                "IR_SE_101": (100, "ir_se"), "IR_SE_152": (152, "ir_se")}
    for name, build in irse.IRSE_MODELS.items():
        assert irse.infer_irse(_meta(build).state_dict()) == (*expected[name], 112), name


def test_dfanet_checkpoint_loads_and_sites_are_its_dropout_positions(tmp_path, ir50_source):
    drop = _dropout_variant(ir50_source)
    plain = _meta(irse.IR_50)
    # the remapped layout is exactly model_irse_drop.py's, and the remapping is invertible
    assert _shapes(drop) == {k: tuple(v.shape) for k, v in irse.remap_evolve_to_dfanet(plain.state_dict()).items()}
    assert irse.remap_dfanet_to_evolve(irse.remap_evolve_to_dfanet(plain.state_dict())).keys() == \
        plain.state_dict().keys()
    assert irse.is_dfanet_layout(drop.state_dict()) and not irse.is_dfanet_layout(plain.state_dict())

    # every dfanet_site is the module that model_irse_drop.py follows with a Dropout(drate), and vice versa
    names = {id(m): n for n, m in plain.named_modules()}
    drop_modules = dict(drop.named_modules())
    sites = plain.dfanet_sites()
    for site in sites:
        renamed = irse.remap_evolve_to_dfanet({f"{names[id(site)]}.weight": site.weight})
        drop_name = next(iter(renamed)).removesuffix(".weight")
        parent, index = drop_name.rsplit(".", 1)
        assert isinstance(drop_modules[drop_name], nn.Conv2d)
        assert isinstance(drop_modules[f"{parent}.{int(index) + 1}"], nn.Dropout), drop_name
    assert len(sites) == 1 + 2 * 24 == sum(isinstance(m, nn.Dropout) and m.p == 0.1 for m in drop.modules())

    path = tmp_path / "ir50_drop.pth"
    torch.save(drop.state_dict(), path)
    model = irse.load_irse(path)
    x = _images(1, seed=4) * 16
    torch.testing.assert_close(model(x), drop(x), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_dfanet_hooks_reproduce_the_dropout_variant(ir50_source):
    """DFANet by forward hooks on dfanet_sites() = model_irse_drop.py with its Dropouts active (BN in eval)."""
    drop = _dropout_variant(ir50_source)
    model = irse.load_irse(drop.state_dict())
    for m in drop.modules():
        if isinstance(m, nn.Dropout) and m.p == 0.1:
            m.train()
    x = _images(1, seed=6) * 16
    handles = [s.register_forward_hook(lambda _m, _i, out: F.dropout(out, 0.1, training=True))
               for s in model.dfanet_sites()]
    try:
        torch.manual_seed(11)
        hooked = model(x)
    finally:
        for h in handles:
            h.remove()
    torch.manual_seed(11)
    _close(hooked, drop(x), rel=1e-5)
    assert not torch.allclose(hooked, model(x), atol=1e-3)


# ---- arcface_torch MobileFaceNet -------------------------------------------------------------------------------


def test_mobilefacenet_round_trip_matches_source_and_reference(tmp_path):
    source = _randomize(mobilefacenet.MobileFaceNet(), seed=9)
    path = tmp_path / "backbone.safetensors"
    save_file(source.state_dict(), str(path))  # safetensors goes through load_file

    model = mobilefacenet.load_mobilefacenet(path)
    assert set(model.state_dict()) == set(_meta(mobilefacenet.get_mbf).state_dict())
    x = _images(1)
    expected = source(x)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
    _close(_ref_mbf(source.state_dict(), x), expected)


def test_mobilefacenet_keys_and_sites():
    mbf = _meta(mobilefacenet.MobileFaceNet)
    s = _shapes(mbf)
    assert len(s) == 333
    assert s["layers.0.layers.0.weight"] == (128, 3, 3, 3) and s["layers.0.layers.2.weight"] == (128,)
    assert s["layers.1.layers.0.weight"] == (128, 2, 3, 3)  # groups=64 on 128 channels
    assert s["layers.2.layers.0.layers.0.weight"] == (128, 128, 1, 1)
    assert s["layers.3.layers.3.layers.1.layers.0.weight"] == (128, 1, 3, 3)
    assert s["layers.5.layers.5.layers.2.layers.1.running_var"] == (256,) and "layers.5.layers.6.layers.0" not in s
    assert s["conv_sep.layers.0.weight"] == (512, 256, 1, 1)
    assert s["features.layers.0.layers.0.weight"] == (512, 1, 7, 7)
    assert s["features.layers.2.weight"] == (512, 512) and "features.layers.2.bias" not in s
    assert "features.layers.3.running_mean" in s
    sites = mbf.dfanet_sites()
    assert len(sites) == 1 + 3 * (4 + 6 + 2) and sites[0] is mbf.layers[0].layers[0]
    assert sites[1] is mbf.layers[3].layers[0].layers[0].layers[0]
    large = _meta(mobilefacenet.get_mbf_large).state_dict()
    assert mobilefacenet.infer_mobilefacenet(large) == {"num_features": 512, "blocks": (2, 8, 12, 4), "scale": 4}


# ---- facenet-pytorch InceptionResnetV1 -------------------------------------------------------------------------


@pytest.fixture
def torch_dirs(tmp_path, monkeypatch):
    """A throwaway TORCH_HOME (facenet-pytorch's cache root) and torch.hub directory."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored after the test
    torch.hub.set_dir(str(tmp_path / "hub"))
    return tmp_path / "torch_home", tmp_path / "hub"


def test_facenet_missing_weights_says_where_to_put_them(torch_dirs):
    home, hub = torch_dirs
    with pytest.raises(FileNotFoundError) as info:
        facenet.load_inception_resnet_v1("vggface2")
    msg = str(info.value)
    assert "20180402-114759-vggface2.pt" in msg and str(home / "checkpoints" / "20180402-114759-vggface2.pt") in msg
    assert str(hub / "checkpoints") in msg and "checkpoint=" in msg
    assert isinstance(info.value, ValueError)  # a UserError too: the CLI prints it without a traceback
    assert not (home / "checkpoints").exists()  # nothing created, nothing downloaded
    assert facenet.facenet_weight_paths("casia-webface")[0] == home / "checkpoints" / "20180408-102900-casia-webface.pt"
    with pytest.raises(ValueError, match="vggface2"):
        facenet.load_inception_resnet_v1("webface")


def test_facenet_cached_weights_load_and_match(torch_dirs):
    _, hub = torch_dirs
    source = _randomize(InceptionResnetV1(pretrained=None, classify=True, num_classes=8631), seed=13)
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), hub / "checkpoints" / "20180402-114759-vggface2.pt")

    model = facenet.load_inception_resnet_v1("vggface2")
    assert set(model.state_dict()) == set(source.state_dict())
    assert model.state_dict()["logits.weight"].shape == (8631, 512) and not model.classify
    assert model.state_dict()["last_linear.weight"].shape == (512, 1792)
    x = _images(1, size=96)  # 160x160 in use; the network pools adaptively, and a smaller input is cheaper on CPU
    source.classify = False
    expected = source(x)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
    assert expected.shape == (1, 512)
    torch.testing.assert_close(expected.norm(dim=1), torch.ones(1))

    # facenet-pytorch's own cache location is found too, and checkpoint= reads any path
    home = torch_dirs[0] / "checkpoints"
    home.mkdir(parents=True)
    (hub / "checkpoints" / "20180402-114759-vggface2.pt").rename(home / "20180402-114759-vggface2.pt")
    assert facenet._find_weights("vggface2") == home / "20180402-114759-vggface2.pt"
    again = facenet.load_inception_resnet_v1(None, checkpoint=home / "20180402-114759-vggface2.pt")
    reloaded = again.state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in model.state_dict().items())


# ---- the shared loader -----------------------------------------------------------------------------------------


class _NotWeights:
    pass


def test_loader_unwraps_state_dict_and_dataparallel_prefix(tmp_path):
    source = _randomize(mobilefacenet.MobileFaceNet(), seed=21)
    written = source.state_dict()
    # DataParallel training, a {"state_dict": ...} wrapper, and an old torch without num_batches_tracked
    state = {f"module.{k}": v for k, v in written.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    assert set(ckpt.load_state_dict_file(path)) == {k[len("module."):] for k in state}
    loaded = mobilefacenet.load_mobilefacenet(path).state_dict()
    assert loaded.keys() == written.keys()
    assert all(torch.equal(loaded[k], written[k]) for k in written if not k.endswith("num_batches_tracked"))
    # an initialised (not meta) model goes through load_state_dict's copy; its own counters fill the gaps
    model = ckpt.load_into(mobilefacenet.MobileFaceNet(), path, "arcface_torch MobileFaceNet")
    copied = model.state_dict()
    assert all(torch.equal(copied[k], v) for k, v in loaded.items() if not k.endswith("tracked"))
    # half-precision checkpoints come back as float32 models
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in written.items()}, tmp_path / "half.pth")
    half = mobilefacenet.load_mobilefacenet(tmp_path / "half.pth")
    assert {p.dtype for p in half.parameters()} == {torch.float32}


def test_wrong_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "mbf.pth"
    torch.save(_meta(mobilefacenet.MobileFaceNet).to_empty(device="cpu").state_dict(), path)
    with pytest.raises(ValueError) as info:
        iresnet.load_iresnet(path, name="r18")  # arcface_torch's get_model() name
    msg = str(info.value)
    assert isinstance(info.value, ckpt.CheckpointError) and "arcface_torch iresnet18" in msg and str(path) in msg
    assert "missing key" in msg and "conv1.weight" in msg and "unexpected key" in msg
    assert "MobileFaceNet" in msg  # what it looks like instead
    with pytest.raises(ckpt.CheckpointError, match="not an arcface_torch IResNet.*MobileFaceNet"):
        iresnet.load_iresnet(path)
    with pytest.raises(ckpt.CheckpointError, match="not a face.evoLVe IR network"):
        irse.load_irse(path)

    r18 = _meta(iresnet.iresnet18, num_features=256).to_empty(device="cpu").state_dict()
    with pytest.raises(ckpt.CheckpointError, match=r"shape mismatch.*fc\.weight \(256, 25088\) vs \(512, 25088\)"):
        iresnet.load_iresnet(r18, num_features=512)
    with pytest.raises(ckpt.CheckpointError, match="face.evoLVe IR_50.*missing"):
        irse.load_irse(r18, name="IR_50")

    pickled = tmp_path / "pickled.pth"
    torch.save({"weight": torch.zeros(1), "obj": _NotWeights()}, pickled)
    with pytest.raises(ckpt.CheckpointError, match="refusing"):
        ckpt.load_state_dict_file(pickled)
    with pytest.raises(FileNotFoundError):
        ckpt.load_state_dict_file(tmp_path / "absent.pth")

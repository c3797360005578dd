"""Bad input to the export API: one clear TextcamError line, and no bundle (or partial one) left behind."""

from __future__ import annotations

import re
import sys

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
nn = torch.nn

from textcam.errors import TextcamError  # noqa: E402
from textcam.export import export_bundle, load_model  # noqa: E402
from textcam.export.model_source import load_state_dict_file  # noqa: E402

# --- tiny models -------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """conv -> block -> global average pool -> linear; ``block`` is where odd ops go."""

    def __init__(self, num_classes: int = 3, block: nn.Module | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.block = block or nn.ReLU()
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.block(self.conv(x)).mean(dim=(2, 3)))


class OtherNet(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class Median(nn.Module):  # aten.median: no ONNX translation (forward op)
    def forward(self, x):
        return x - x.median(dim=1, keepdim=True).values


class GridSample(nn.Module):  # aten.grid_sampler_2d_backward: no ONNX translation (backward op)
    def forward(self, x):
        theta = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.9, 0.1]]).expand(x.shape[0], 2, 3)
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        return nn.functional.grid_sample(x, grid, align_corners=False)


class Eigh(nn.Module):  # aten._linalg_eigh: the exporter stops at prims.copy_to from its backward
    def forward(self, x):
        gram = torch.einsum("bchw,bdhw->bcd", x, x)
        return torch.einsum("bcd,bdhw->bchw", torch.linalg.eigh(gram)[1], x)


class ItemBranch(nn.Module):  # a Python branch on a tensor value: make_fx cannot trace it
    def forward(self, x):
        return x * 2 if x.mean().item() > 0 else x * 3


def _no_leftovers(out):
    out = out.absolute()
    leftovers = sorted(p.name for p in out.parent.glob(f".{out.name}.*"))
    assert not leftovers, f"temporary directories left behind: {leftovers}"


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message.strip() == message and message
    assert "Traceback" not in message
    return message


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out.textcam"


def _export_fails(model, layer, out, match, **kwargs) -> str:
    kwargs.setdefault("input_size", 16)
    with pytest.raises(TextcamError) as info:
        export_bundle(model, layer, out, **kwargs)
    message = _one_line(info)
    assert re.search(match, message), message
    assert not out.exists()
    _no_leftovers(out)
    return message


# --- model spec ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, match",
    [
        ("resnet18", r"--model 'resnet18': expected 'torchvision:NAME'"),
        ("torchvision:", r"expected 'torchvision:NAME'"),
        ("torchvision:resnt18", r"unknown torchvision model; did you mean resnet18"),
        ("torchvision:not_a_model_at_all", r"--model torchvision:not_a_model_at_all: unknown torchvision model$"),
        ("torchvison:resnet18", r"cannot import 'torchvison'.*did you mean torchvision\?"),
        ("nosuchfamily:model", r"cannot import 'nosuchfamily'.*expected 'torchvision:NAME'"),
        ("torchvision:resnet18:NOPE", r"unknown weights; available: IMAGENET1K_V1"),
        ("textcam.errors:nothing_here", r"module 'textcam.errors' has no attribute 'nothing_here'"),
        ("textcam.errors:did_you_mean", r"building the model raised TypeError"),
        ("textcam:__version__", r"'__version__' is a str, not a factory function"),
    ],
)
def test_bad_model_spec(spec, match):
    with pytest.raises(TextcamError) as info:
        load_model(spec)
    assert re.search(match, _one_line(info)), str(info.value)


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """An importable module ``bad_factories`` with factories that misbehave."""
    (tmp_path / "bad_factories.py").write_text(
        "import torch\n"
        "def raises(num_classes=3):\n    raise RuntimeError('boom in the factory')\n"
        "def not_a_module(num_classes=3):\n    return 42\n"
        "def no_num_classes():\n    return torch.nn.Conv2d(3, 3, 1)\n"
        "ready = torch.nn.Conv2d(3, 3, 1)\n"
    )
    (tmp_path / "broken_module.py").write_text("raise ValueError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("bad_factories", "broken_module"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    "spec, num_classes, match",
    [
        ("bad_factories:raises", None, r"--model bad_factories:raises: building the model raised RuntimeError: "
                                       r"boom in the factory"),
        ("bad_factories:not_a_module", None, r"the factory returned int, not a torch.nn.Module"),
        ("bad_factories:no_num_classes", 5, r"--num-classes: the factory .* takes no num_classes argument"),
        ("bad_factories:ready", 5, r"is a ready-made module, not a factory; drop the option"),
        ("bad_factories:rases", None, r"has no attribute 'rases'; did you mean raises\?"),
        ("broken_module:build", None, r"importing 'broken_module' raised ValueError: broken at import"),
        ("torchvision:resnet18:IMAGENET1K_V1", 5, r"--num-classes 5: the published weights "
                                                  r"torchvision:resnet18:IMAGENET1K_V1 have 1000 classes"),
    ],
)
def test_bad_factory(factories, spec, num_classes, match):
    with pytest.raises(TextcamError) as info:
        load_model(spec, num_classes=num_classes)
    assert re.search(match, _one_line(info)), str(info.value)


def test_factory_module_is_usable(factories):
    loaded = load_model("bad_factories:no_num_classes")
    assert isinstance(loaded.module, nn.Conv2d) and not loaded.module.training


# --- weights files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    good = TinyNet(3).state_dict()
    files = {}

    def save(name, obj):
        files[name] = folder / name
        torch.save(obj, files[name])

    save("good.pt", good)
    save("wrong_classes.pt", TinyNet(10).state_dict())
    save("other_arch.pt", OtherNet(3).state_dict())
    save("whole_model.pt", TinyNet(3))
    save("checkpoint.pt", {"epoch": 4, "state_dict": good})
    save("data_parallel.pt", {f"module.{k}": v for k, v in good.items()})
    save("not_tensors.pt", {"lr": 0.1})
    save("a_list.pt", [torch.zeros(2)])
    data = files["good.pt"].read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "random.bin").write_bytes(bytes(range(256)) * 20)
    (folder / "empty.pt").write_bytes(b"")
    (folder / "text.pt").write_text("these are not weights\n")
    from safetensors.torch import save_file

    save_file(good, str(folder / "good.safetensors"))
    (folder / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    return folder


@pytest.mark.parametrize(
    "name, match",
    [
        ("wrong_classes.pt", r"does not match tiny: 2 shape mismatch\(es\), e\.g\. fc\.weight: file \(10, 4\) vs "
                             r"model \(3, 4\) \(pass --num-classes 10 to match the file\)"),
        ("other_arch.pt", r"does not match tiny: \d+ missing key\(s\).*unexpected key\(s\).*another architecture"),
        ("whole_model.pt", r"pickles Python objects \(.*TinyNet\), not only tensors: a whole model\?"),
        ("not_tensors.pt", r"holds a dict whose entry 'lr' is a float, not a state dict"),
        ("a_list.pt", r"holds a list, not a state dict"),
        ("truncated.pt", r"looks truncated or damaged"),
        ("random.bin", r"not a PyTorch checkpoint \(torch.load failed: \w+\)"),
        ("text.pt", r"not a PyTorch checkpoint"),
        ("empty.pt", r"the file is empty"),
        ("bad.safetensors", r"not a readable safetensors file"),
        ("missing.pt", r"file not found"),
    ],
)
def test_bad_weights(weight_files, name, match):
    path = weight_files / name
    with pytest.raises(TextcamError) as info:
        load_state_dict_file(TinyNet(3), path, "tiny")
    message = _one_line(info)
    assert message.startswith(f"--weights {path}: "), message
    assert re.search(match, message), message
    if name.endswith(".pt") and name != "missing.pt" and "match" not in match:
        assert message.endswith("expected a state dict saved with torch.save(model.state_dict(), PATH)")


@pytest.mark.parametrize("name", ["good.pt", "checkpoint.pt", "data_parallel.pt", "good.safetensors"])
def test_good_weights_load(weight_files, name):
    model = TinyNet(3)
    digest = load_state_dict_file(model, weight_files / name, "tiny")
    assert len(digest) == 64
    torch.testing.assert_close(model.conv.weight, torch.load(weight_files / "good.pt")["conv.weight"])


def test_wrong_weights_through_load_model(weight_files):
    path = weight_files / "good.pt"  # a TinyNet state dict is no resnet18
    with pytest.raises(TextcamError, match=r"^--weights .*: does not match torchvision:resnet18: .*missing key"):
        load_model("torchvision:resnet18", num_classes=3, weights=path)


# --- layers, heads, input sizes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5)


def test_unknown_layer_suggests_close_names(resnet, out):
    message = _export_fails(resnet, "layr4", out, r"^target_layer='layr4': no such module in the model; did you mean "
                                                   r"layer4\b", input_size=64)
    assert "probing" not in message


@pytest.mark.parametrize("layer", ["fc", "avgpool"])
def test_layer_without_spatial_output(resnet, out, layer):
    message = _export_fails(resnet, layer, out, rf"^target_layer='{layer}': its output \(2, (5|512, 1, 1)\) at "
                                                r"input_size=64x64 has no spatial grid", input_size=64)
    assert "e.g. 'layer4'" in message and "larger input size" not in message


def test_input_too_small_for_the_layer(resnet, out):
    _export_fails(resnet, "layer4", out, r"target_layer='layer4': its output \(2, 512, 1, 1\) at input_size=8x8 has "
                                         r"no spatial grid.*'layer1', or a larger input size", input_size=8)


def test_vit_at_a_size_it_does_not_accept(out):
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=3)
    _export_fails(vit, None, out, r"^input_size=48x48: the model cannot run on a 3x48x48 input \(Wrong image "
                                  r"height! Expected 32 but got 48!\); use an input size", input_size=48)


def test_cam_needs_a_linear_head(out):
    torch.manual_seed(0)
    mobilenet = torchvision.models.mobilenet_v3_small(num_classes=4)
    _export_fails(mobilenet, "features", out, r"^method=cam needs a global-average-pool \+ linear head after layer "
                                              r"'features': .*; use method=gradcam", method="cam", input_size=64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_size": 0}, r"^input_size=0x0: each side must be between 8 and 4096"),
        ({"input_size": (64,)}, r"^input_size=64: expected H or HxW"),
        ({"input_size": "abc"}, r"^input_size=a.*: expected H or HxW"),
        ({"input_size": (16.5, 16)}, r"^input_size=16.5x16: expected H or HxW \(integers\)"),
        ({"input_size": 5000}, r"each side must be between 8 and 4096"),
        ({"method": "gradcan"}, r"^method='gradcan': unknown CAM method; choose one of gradcam"),
        ({"layout": "nwhc"}, r"^layout='nwhc': choose one of auto, nchw, nhwc, tokens"),
        ({"layout": "tokens"}, r"^layout=tokens needs a \[B, N, C\] output, the layer gives \(2, 4, 16, 16\)"),
        ({"mean": (0.5, 0.5)}, r"^mean=\(0.5, 0.5\): expected three finite numbers"),
        ({"std": (0.2, 0.0, 0.2)}, r"^std=0.2,0.0,0.2: each value must be positive"),
        ({"std": ("a", 1, 1)}, r"^std=\('a', 1, 1\): expected three finite numbers"),
        ({"class_names": ["a", "b"]}, r"^class_names: 2 names given, but the model has 3 classes"),
        ({"resize": "squash"}, r"^resize 'squash': choose one of stretch, center_crop"),
    ],
)
def test_bad_export_arguments(out, kwargs, match):
    _export_fails(TinyNet(3), "conv", out, match, **kwargs)


def test_not_a_module(out):
    _export_fails("resnet18", "layer4", out, r"^model: expected a torch.nn.Module, got str")


def test_model_returning_a_tuple(out):
    class Pair(TinyNet):
        def forward(self, x):
            return super().forward(x), x

    _export_fails(Pair(), "conv", out, r"the model must return logits of shape \[batch, classes\]; it returned tuple")


# --- output path -----------------------------------------------------------------------------------


def test_output_is_a_non_bundle_directory(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "keep.jpg").write_bytes(b"precious")
    with pytest.raises(TextcamError) as info:
        export_bundle(TinyNet(), "conv", out, input_size=16)
    assert re.search(r"directory exists and is not a textcam bundle; refusing to overwrite it", _one_line(info))
    assert sorted(p.name for p in out.iterdir()) == ["keep.jpg"] and (out / "keep.jpg").read_bytes() == b"precious"
    _no_leftovers(out)


def test_output_is_a_file(tmp_path):
    out = tmp_path / "model.textcam"
    out.write_text("not a directory")
    with pytest.raises(TextcamError, match=r"exists and is not a directory; choose another output path"):
        export_bundle(TinyNet(), "conv", out, input_size=16)
    assert out.read_text() == "not a directory"
    _no_leftovers(out)


def test_output_below_a_file(tmp_path):
    (tmp_path / "plain_file").write_text("x")
    out = tmp_path / "plain_file" / "model.textcam"
    with pytest.raises(TextcamError) as info:
        export_bundle(TinyNet(), "conv", out, input_size=16)
    assert re.search(r"cannot be created because .*plain_file is a file, not a directory", _one_line(info))


def test_existing_bundle_is_replaced_and_an_empty_directory_is_used(tmp_path):
    out = tmp_path / "tiny.textcam"
    out.mkdir()  # an empty directory is fine
    export_bundle(TinyNet(), "conv", out, input_size=16)
    first = (out / "manifest.json").read_text()
    with pytest.raises(TextcamError, match="pass force=True"):  # an existing bundle is kept without force
        export_bundle(TinyNet(), "conv", out, input_size=16, class_names=["a", "b", "c"])
    assert (out / "manifest.json").read_text() == first
    export_bundle(TinyNet(), "conv", out, input_size=16, class_names=["a", "b", "c"], force=True)
    assert (out / "manifest.json").read_text() != first and '"a"' in (out / "manifest.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.textcam"]


# --- operations the exporter cannot translate --------------------------------------------------------


@pytest.mark.parametrize(
    "block, match",
    [
        (Median(), r"^cannot translate the traced graph to ONNX: operation aten\.median in layer 'block' has no "
                   r"ONNX translation"),
        (GridSample(), r"operation aten\.grid_sampler_2d_backward in layer 'block' has no ONNX translation"),
        (Eigh(), r"operation aten\._linalg_eigh in layer 'block' has no ONNX translation \(the exporter stopped "
                 r"at prims\.copy_to\)"),
        (ItemBranch(), r"^cannot trace the model: layer 'block' uses a tensor's value in Python control flow.*"
                       r"torch\.where"),
    ],
    ids=["median", "grid_sample-backward", "eigh", "item-branch"],
)
def test_untranslatable_operation_names_op_and_layer(out, block, match):
    torch.manual_seed(0)
    _export_fails(TinyNet(3, block), "conv", out, match)


def test_describe_failure_without_graph_or_model():
    from textcam.export.trace_diagnosis import describe_failure

    message = describe_failure(RuntimeError("No ONNX function found for <OpOverload(op='aten.foo_bar')>"))
    assert message.startswith("operation aten.foo_bar has no ONNX translation")
    assert describe_failure(ValueError("\x1b[96msomething else\x1b[0m\nmore")) == "something else"


# --- verification ----------------------------------------------------------------------------------------


def test_wrong_graph_fails_verification_and_writes_nothing(out, monkeypatch):
    """A graph that differs from eager PyTorch (here: one weight changed after export) is refused."""
    import onnx
    from onnx import numpy_helper

    import textcam.export.bundle_export as bundle_export

    real_export = bundle_export.export_onnx

    def export_then_corrupt(graph, image, target_class, path, **kwargs):
        written = real_export(graph, image, target_class, path, **kwargs)
        model = onnx.load(str(path))
        weights = max(model.graph.initializer, key=lambda t: len(t.dims))  # the conv kernel
        weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * 1.5, weights.name))
        onnx.save(model, str(path))
        return written

    monkeypatch.setattr(bundle_export, "export_onnx", export_then_corrupt)
    message = _export_fails(TinyNet(3), "conv", out, r"^verification failed: the exported graph disagrees with "
                                                     r"eager PyTorch on fresh inputs by more than float32 rounding "
                                                     r"explains \(.*\); nothing was written")
    assert "logits_max_rel_err" in message


def test_verify_onnx_refuses_a_different_module(tmp_path):
    from textcam.export.cam_methods import get_method
    from textcam.export.joint_graph import JointExplainer
    from textcam.export.layout import Layout
    from textcam.export.verification import verify_onnx

    torch.manual_seed(0)
    bundle = export_bundle(TinyNet(3), "conv", tmp_path / "tiny.textcam", input_size=16).path
    other = TinyNet(3).eval()  # fresh random weights: not the exported model
    for p in other.parameters():
        p.requires_grad_(False)
    joint = JointExplainer(other, other.conv, get_method("gradcam"), Layout("nchw", 4, (16, 16)), (16, 16)).eval()
    with pytest.raises(TextcamError, match=r"^verification failed: .*logits_max_rel_err"):
        verify_onnx(bundle / "model.onnx", joint, (16, 16))


def test_export_returns_a_path_like_result(tmp_path):
    import os
    from pathlib import Path

    from textcam.export.bundle_export import ExportResult
    from textcam.runtime import Bundle

    out = tmp_path / "result.textcam"
    result = export_bundle(TinyNet(), "conv", out, input_size=16)
    assert isinstance(result, ExportResult) and result.path == out
    assert os.fspath(result) == str(result) == str(out) and Path(result) == out  # code written for a Path
    assert result.layer == "conv" and result.method == "gradcam"
    assert result.verification["passed"] is True and result.verification["batch_sizes"]
    assert {"probe_s", "trace_s", "onnx_export_s", "verify_s", "selftest_s"} <= set(result.timings)
    assert result.manifest["target_layer"]["name"] == "conv"
    assert Bundle.open(result).manifest == result.manifest
    assert "manifest" not in repr(result)

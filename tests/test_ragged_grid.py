"""The ragged grid evaluation against the per-cell loop, on phantoms with a tiny untrained UNet and real LPIPS weights."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from pipelines.curation.pipeline import CurationSettings
from pipelines.data.dataset import PreparedSplit, prepare_dataset
from pipelines.data.split import SplitSettings
from pipelines.diffusion.noise import NoiseSource, make_noise
from pipelines.diffusion.performance import AutocastModule, inference_model
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.evaluation.grid import CellOutputs, GridCell, GridSettings, evaluate_cell
from pipelines.evaluation.ragged import evaluate_grid
from pipelines.methods.autoddpm import AutoDDPMSettings

T_VALUES = [2, 4, 6]
# Four images in chunks of three: both paths take two chunks.
SETTINGS = GridSettings(batch_size=3, autoddpm=AutoDDPMSettings(t_inpaint=2, resample_steps=2))
AUTODDPM_CALLS_PER_CHUNK = SETTINGS.autoddpm.t_inpaint * SETTINGS.autoddpm.resample_steps
# The ragged batch changes only batch sizes, and with them the order of floating-point sums.
TOLERANCE = 1e-5
# bf16 has 8 significant bits, so each UNet output is rounded by up to about 0.4 %. Over at
# most six steps here the AnoDDPM reconstructions moved by at most 0.004.
BF16_TOLERANCE = 0.01


def noise_for(noise_type: str) -> NoiseSource:
    # Two octaves keep the simplex draws fast, and the draw order under test does not depend on the octave count.
    return make_noise(noise_type, octaves=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Run these small models on one thread, which other processes on the cores slow far less than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> PreparedSplit:
    folder = tmp_path_factory.mktemp("ragged")
    source = {"kind": "synthetic", "name": "synthetic-phantoms", "healthy": 24, "pathological": 10, "size": 64, "seed": 0}
    settings = SplitSettings(max_test={"healthy": 2, "pathological": 2})
    prepared = prepare_dataset(
        [source], data_root=folder, curation=CurationSettings(image_size=32), split=settings, cache_dir=folder / "cache"
    )
    return prepared.splits["test"]


@contextmanager
def counting_calls(model: torch.nn.Module) -> Iterator[list[int]]:
    """Count the UNet's forward calls with a forward hook."""
    calls = [0]
    handle = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def per_cell(cells: list[GridCell], model, split, distance) -> dict[GridCell, CellOutputs]:
    return {
        cell: evaluate_cell(
            cell, model, DiffusionSchedule(20), split, split="test", noise=noise_for(cell.noise), distance=distance, settings=SETTINGS
        )
        for cell in cells
    }


def ragged(cells: list[GridCell], model, split, distance, **options) -> dict[GridCell, CellOutputs]:
    return evaluate_grid(
        cells,
        {"gaussian": model, "simplex": model},
        DiffusionSchedule(20),
        split,
        split="test",
        noise_for=noise_for,
        distance=distance,
        settings=SETTINGS,
        **options,
    )


def assert_same_outputs(expected: CellOutputs, actual: CellOutputs) -> None:
    assert actual.cell == expected.cell
    assert actual.split == expected.split
    assert actual.ids == expected.ids
    assert np.array_equal(actual.labels, expected.labels)
    assert actual.score_map == expected.score_map
    np.testing.assert_allclose(actual.reconstructions, expected.reconstructions, atol=TOLERANCE)
    for field in ("maps", "scores", "image_metrics", "intermediates"):
        expected_arrays, actual_arrays = getattr(expected, field), getattr(actual, field)
        assert set(actual_arrays) == set(expected_arrays), field
        for name, value in expected_arrays.items():
            np.testing.assert_allclose(actual_arrays[name], value, atol=TOLERANCE, err_msg=f"{field}/{name}")


@pytest.mark.parametrize(
    ("method", "noise"), [("anoddpm", "gaussian"), ("anoddpm", "simplex"), ("autoddpm", "gaussian")], ids=lambda value: value
)
def test_ragged_equals_per_cell_loop(method: str, noise: str, model, split, distance) -> None:
    cells = [GridCell(method, noise, t) for t in T_VALUES]
    chunks = 2
    extra = AUTODDPM_CALLS_PER_CHUNK if method == "autoddpm" else 0

    with counting_calls(model) as calls:
        expected = per_cell(cells, model, split, distance)
    assert calls[0] == chunks * (sum(T_VALUES) + len(T_VALUES) * extra)

    with counting_calls(model) as calls:
        actual = ragged(cells, model, split, distance)
    assert calls[0] == chunks * (max(T_VALUES) + extra)

    assert list(actual) == cells
    for cell in cells:
        assert_same_outputs(expected[cell], actual[cell])


def test_ragged_chunks_within_max_batch_size(model, split, distance) -> None:
    cells = [GridCell("anoddpm", "gaussian", t) for t in T_VALUES]
    batch_sizes: list[int] = []
    handle = model.register_forward_hook(lambda _module, inputs, _output: batch_sizes.append(inputs[0].shape[0]))
    try:
        actual = ragged(cells, model, split, distance, max_batch_size=7)
    finally:
        handle.remove()

    # Seven samples fit two images of three cells, so four images take two chunks.
    assert len(batch_sizes) == 2 * max(T_VALUES)
    assert max(batch_sizes) == 6
    expected = per_cell(cells, model, split, distance)
    for cell in cells:
        assert_same_outputs(expected[cell], actual[cell])


def test_ragged_mixes_methods_and_noise_types(model, split, distance) -> None:
    cells = [GridCell("autoddpm", "gaussian", 3), GridCell("anoddpm", "simplex", 2), GridCell("anoddpm", "gaussian", 3)]
    actual = ragged(cells, model, split, distance)
    assert list(actual) == cells
    expected = per_cell(cells, model, split, distance)
    for cell in cells:
        assert_same_outputs(expected[cell], actual[cell])


def test_ragged_rejects_repeated_cell(model, split, distance) -> None:
    cell = GridCell("anoddpm", "gaussian", 2)
    with pytest.raises(ValueError, match=r"cells must be distinct, but got anoddpm-gaussian-t2 more than once"):
        ragged([cell, cell], model, split, distance)


def test_ragged_rejects_missing_model(model, split, distance) -> None:
    with pytest.raises(ValueError, match=r"models must contain a model for noise type 'simplex' .* but got models for \['gaussian'\]"):
        evaluate_grid(
            [GridCell("anoddpm", "simplex", 2)], {"gaussian": model}, DiffusionSchedule(20), split,
            split="test", noise_for=noise_for, distance=distance, settings=SETTINGS,
        )


def test_ragged_rejects_unknown_method(model, split, distance) -> None:
    with pytest.raises(ValueError, match=r"method must be one of \['anoddpm', 'autoddpm'\], but got 'ddim'"):
        ragged([GridCell("ddim", "gaussian", 2)], model, split, distance)


def test_ragged_rejects_small_max_batch_size(model, split, distance) -> None:
    cells = [GridCell("anoddpm", "gaussian", t) for t in T_VALUES]
    with pytest.raises(ValueError, match=r"max_batch_size must be at least the number of cells run together \(3\), but got 2"):
        ragged(cells, model, split, distance, max_batch_size=2)


def test_bf16_grid_close_to_fp32(model, split, distance) -> None:
    cells = [GridCell("anoddpm", "gaussian", t) for t in T_VALUES] + [GridCell("autoddpm", "gaussian", 4)]
    assert inference_model(model, "cpu") is model  # auto is fp32 on the CPU
    # The UNet zero-initialises its output and residual convolutions, so untrained it predicts
    # zero noise at any precision. Random weights there make the precision matter.
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    wrapped = inference_model(model, "cpu", "bf16")
    assert isinstance(wrapped, AutocastModule)
    dtypes: set[torch.dtype] = set()
    handle = model.conv_in.register_forward_hook(lambda _module, _inputs, output: dtypes.add(output.dtype))
    try:
        actual = evaluate_grid(
            cells, {"gaussian": wrapped}, DiffusionSchedule(20), split, split="test", noise_for=noise_for, distance=distance, settings=SETTINGS
        )
    finally:
        handle.remove()
    assert dtypes == {torch.bfloat16}

    expected = ragged(cells, model, split, distance)
    for cell in cells:
        # Only the UNet runs in bf16, so the reconstructions stay fp32 and close to the fp32 ones.
        assert actual[cell].reconstructions.dtype == np.float32
        difference = np.abs(actual[cell].reconstructions - expected[cell].reconstructions)
        assert 0 < difference.mean() < BF16_TOLERANCE, (cell.name, difference.mean())
        if cell.method == "anoddpm":
            assert difference.max() < BF16_TOLERANCE, (cell.name, difference.max())
        # AutoDDPM thresholds its first map into an inpainting mask, so a few pixels may flip
        # and change locally. Its final map stays close.
        score_map = actual[cell].score_map
        assert np.abs(actual[cell].maps[score_map] - expected[cell].maps[score_map]).max() < BF16_TOLERANCE, cell.name

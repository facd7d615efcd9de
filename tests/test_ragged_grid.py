"""The ragged grid evaluation against the per-cell loop, on phantoms with a tiny untrained UNet and real LPIPS weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from pipelines.curation.pipeline import CurationSettings
from pipelines.data.dataset import PreparedSplit, prepare_dataset
from pipelines.data.split import SplitSettings
from pipelines.diffusion.noise import NoiseSource, make_noise
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

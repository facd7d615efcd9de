"""AnoDDPM and AutoDDPM: step counts, the mask and stitch stages, and the re-sampling loop."""

from __future__ import annotations

import pytest
import torch

from pipelines.diffusion.noise import GaussianNoise, SimplexNoise
from pipelines.diffusion.schedule import DiffusionSchedule
from pipelines.diffusion.unet import build_unet
from pipelines.methods.anoddpm import anoddpm_reconstruct, anoddpm_reconstruct_ragged
from pipelines.methods.autoddpm import AutoDDPMSettings, anomaly_mask, autoddpm, likelihood_map, resample_inpaint
from pipelines.methods.draws import draw_noise
from pipelines.methods.reverse import reverse_process


class CountingModel(torch.nn.Module):
    """Wraps a UNet and records the timestep of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = build_unet(channels=(8, 8), attention_levels=(False, False), num_res_blocks=1, num_head_channels=8, norm_num_groups=8)
        self.timesteps: list[list[int]] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.timesteps.append(timesteps.tolist())
        return self.unet(x, timesteps)


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def model() -> CountingModel:
    torch.manual_seed(0)
    return CountingModel().eval()


@pytest.mark.parametrize("t", [1, 3, 7])
def test_reverse_loop_runs_exactly_t_steps(model: CountingModel, t: int) -> None:
    schedule = DiffusionSchedule(10)
    x_t = torch.randn(2, 1, 8, 8)
    reverse_process(model, schedule, x_t, t, noise=GaussianNoise(), generator=generator(), clip=(0.0, 1.0))
    assert len(model.timesteps) == t
    assert [steps[0] for steps in model.timesteps] == list(range(t - 1, -1, -1))


@pytest.mark.parametrize("noise", [GaussianNoise(), SimplexNoise()], ids=["gaussian", "simplex"])
def test_anoddpm_calls_unet_t_times(model: CountingModel, noise: object) -> None:
    schedule = DiffusionSchedule(20)
    images = torch.rand(3, 1, 16, 16)
    noise_type = "gaussian" if isinstance(noise, GaussianNoise) else "simplex"
    reconstruction = anoddpm_reconstruct(model, schedule, images, 5, noise_type=noise_type, noise=noise, generator=generator())
    assert len(model.timesteps) == 5
    assert reconstruction.shape == images.shape
    assert reconstruction.min() >= 0 and reconstruction.max() <= 1


def test_anoddpm_rejects_t_above_T(model: CountingModel) -> None:
    with pytest.raises(ValueError, match=r"noise level t must be between 1 and T=10, but got 11"):
        anoddpm_reconstruct(model, DiffusionSchedule(10), torch.rand(1, 1, 8, 8), 11, noise_type="gaussian", noise=GaussianNoise(), generator=generator())


def test_anoddpm_reproducible_under_seed(model: CountingModel) -> None:
    schedule = DiffusionSchedule(20)
    images = torch.rand(2, 1, 16, 16)
    first = anoddpm_reconstruct(model, schedule, images, 4, noise_type="gaussian", noise=GaussianNoise(), generator=generator())
    second = anoddpm_reconstruct(model, schedule, images, 4, noise_type="gaussian", noise=GaussianNoise(), generator=generator())
    assert torch.equal(first, second)


def sample_generators(count: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + index) for index in range(count)]


@pytest.mark.parametrize("noise", [GaussianNoise(), SimplexNoise(octaves=2)], ids=["gaussian", "simplex"])
def test_per_sample_draws_ignore_batch(noise: object) -> None:
    steps = torch.tensor([4, 2, 7])
    together = draw_noise(noise, (3, 1, 8, 8), steps, sample_generators(3))
    alone = draw_noise(noise, (1, 1, 8, 8), steps[2:], sample_generators(3)[2:])
    assert torch.equal(together[2:], alone)
    assert not torch.equal(together[0], together[1])


def test_per_sample_draws_reject_wrong_count() -> None:
    with pytest.raises(ValueError, match=r"one per sample \(3\), but got 2 generators"):
        draw_noise(GaussianNoise(), (3, 1, 8, 8), torch.tensor([1, 1, 1]), sample_generators(2))


@pytest.mark.parametrize("noise", [GaussianNoise(), SimplexNoise(octaves=2)], ids=["gaussian", "simplex"])
def test_ragged_anoddpm_equals_one_t_at_a_time(model: CountingModel, noise: object) -> None:
    schedule = DiffusionSchedule(20)
    torch.manual_seed(2)
    images = torch.rand(4, 1, 16, 16)
    levels = [3, 1, 3, 2]
    noise_type = "gaussian" if isinstance(noise, GaussianNoise) else "simplex"
    ragged = anoddpm_reconstruct_ragged(
        model, schedule, images, levels, noise_type=noise_type, noise=noise, generators=sample_generators(4)
    )
    # The countdown runs max(t) steps, and images join as it reaches their t.
    assert [len(steps) for steps in model.timesteps] == [2, 3, 4]
    assert [steps[0] for steps in model.timesteps] == [2, 1, 0]

    for index, level in enumerate(levels):
        alone = anoddpm_reconstruct(
            model, schedule, images[index : index + 1], level, noise_type=noise_type, noise=noise,
            generator=sample_generators(4)[index : index + 1],
        )
        torch.testing.assert_close(ragged[index : index + 1], alone, rtol=0, atol=1e-6)


def test_ragged_anoddpm_rejects_bad_input(model: CountingModel) -> None:
    schedule = DiffusionSchedule(10)
    images = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"one entry per image \(2\), but got 1 and 2"):
        anoddpm_reconstruct_ragged(model, schedule, images, [3], noise_type="gaussian", noise=GaussianNoise(), generators=sample_generators(2))
    with pytest.raises(ValueError, match=r"noise level t must be between 1 and T=10, but got 11"):
        anoddpm_reconstruct_ragged(model, schedule, images, [3, 11], noise_type="gaussian", noise=GaussianNoise(), generators=sample_generators(2))


def constructed_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A flat image with a bright square, and a 'reconstruction' without the square."""
    images = torch.full((1, 1, 16, 16), 0.3)
    images[..., 6:9, 6:9] = 0.9
    reconstruction = torch.full_like(images, 0.3)
    return images, reconstruction


def unit_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x[:, :1])


def test_likelihood_map_scales_residual() -> None:
    images, reconstruction = constructed_pair()
    likelihood = likelihood_map(images, reconstruction, unit_distance, percentile=95)
    # 9 of 256 pixels differ, fewer than 5 %, so the 95th percentile is 0: the residual is clipped to 1 there.
    assert torch.equal(likelihood[..., 6:9, 6:9], torch.ones(1, 1, 3, 3))
    assert likelihood.sum().item() == 9


def test_mask_is_thresholded_and_dilated() -> None:
    images, reconstruction = constructed_pair()
    likelihood = likelihood_map(images, reconstruction, unit_distance, percentile=95)
    mask = anomaly_mask(likelihood, percentile=95, threshold=None, dilation_iterations=1)
    expected = torch.zeros_like(mask)
    expected[..., 5:10, 5:10] = 1
    assert torch.equal(mask, expected)
    undilated = anomaly_mask(likelihood, percentile=95, threshold=0.5, dilation_iterations=0)
    assert undilated.sum().item() == 9


def test_stitch_and_resample_keep_known_region(model: CountingModel) -> None:
    images, _ = constructed_pair()
    schedule = DiffusionSchedule(20)
    coarse = torch.rand_like(images)
    mask = torch.zeros_like(images)
    mask[..., 4:12, 4:12] = 1
    stitched = mask * coarse + (1 - mask) * images
    final = resample_inpaint(
        model, schedule, stitched, images, mask, t_inpaint=4, resample_steps=3,
        noise=GaussianNoise(), generator=generator(), clip=(0.0, 1.0),
    )
    assert len(model.timesteps) == 4 * 3
    assert [steps[0] for steps in model.timesteps] == [3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0]
    # At the last step the unmasked region is the original image itself.
    assert torch.equal(final * (1 - mask), images * (1 - mask))
    assert not torch.equal(final * mask, images * mask)


def test_autoddpm_outputs_consistent(model: CountingModel) -> None:
    torch.manual_seed(1)
    images = torch.rand(2, 1, 16, 16)
    settings = AutoDDPMSettings(t_inpaint=3, resample_steps=2)
    output = autoddpm(
        model, DiffusionSchedule(20), images, 5, noise_type="gaussian", noise=GaussianNoise(),
        generator=generator(), distance=unit_distance, settings=settings,
    )
    assert len(model.timesteps) == 5 + 3 * 2
    assert torch.equal(output.stitched, output.mask * output.coarse + (1 - output.mask) * images)
    assert torch.allclose(output.anomaly_map, (images - output.reconstruction).abs() * output.likelihood_map)
    assert set(output.mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(output.reconstruction * (1 - output.mask), images * (1 - output.mask))

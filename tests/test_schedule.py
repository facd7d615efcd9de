"""The DDPM schedule: linear betas, respacing, and the closed-form forward and posterior steps."""

from __future__ import annotations

import pytest
import torch

from pipelines.diffusion.schedule import DiffusionSchedule


def test_linear_betas_match_paper() -> None:
    schedule = DiffusionSchedule(1000)
    assert schedule.betas[0].item() == pytest.approx(1e-4)
    assert schedule.betas[-1].item() == pytest.approx(0.02)
    assert torch.all(schedule.betas[1:] > schedule.betas[:-1])
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
    assert torch.allclose(schedule.alphas_cumprod, expected)


def test_respacing_keeps_noise_levels() -> None:
    full = DiffusionSchedule(1000)
    short = DiffusionSchedule(100, reference_T=1000)
    assert short.stride == 10
    for t in (5, 10, 25, 30, 100):
        assert short.alphas_cumprod[t - 1].item() == pytest.approx(full.alphas_cumprod[10 * t - 1].item(), rel=1e-5)
    assert short.reference_step(25) == 250


def test_respacing_rejects_non_multiple() -> None:
    with pytest.raises(ValueError, match=r"reference_T must be a multiple of T, but got T=300, reference_T=1000"):
        DiffusionSchedule(300, reference_T=1000)


def test_q_sample_closed_form() -> None:
    schedule = DiffusionSchedule(1000)
    x_start = torch.full((2, 1, 4, 4), 0.5)
    noise = torch.ones_like(x_start)
    t = torch.tensor([1, 1000])
    x_t = schedule.q_sample(x_start, t, noise)
    for index, step in enumerate((1, 1000)):
        abar = schedule.alphas_cumprod[step - 1]
        assert torch.allclose(x_t[index], abar.sqrt() * 0.5 + (1 - abar).sqrt())


def test_posterior_variance_zero_at_first_step() -> None:
    schedule = DiffusionSchedule(1000)
    assert schedule.posterior_variance[0].item() == 0.0
    tilde = (1 - schedule.alphas_cumprod_prev[499]) / (1 - schedule.alphas_cumprod[499]) * schedule.betas[499]
    assert schedule.posterior_variance[499].item() == pytest.approx(tilde.item())


def test_p_sample_with_true_noise_recovers_start() -> None:
    # With the exact noise, the predicted x_0 is exact; at t = 1 the step returns it.
    schedule = DiffusionSchedule(100, reference_T=1000)
    x_start = torch.rand(3, 1, 8, 8)
    eps = torch.randn_like(x_start)
    t = torch.ones(3, dtype=torch.long)
    x_t = schedule.q_sample(x_start, t, eps)
    x_prev = schedule.p_sample(x_t, t, eps, torch.randn_like(x_start), clip=None)
    assert torch.allclose(x_prev, x_start, atol=1e-5)


def test_per_sample_steps_differ() -> None:
    schedule = DiffusionSchedule(1000)
    x_start = torch.zeros(2, 1, 2, 2)
    x_t = schedule.q_sample(x_start, torch.tensor([10, 900]), torch.ones_like(x_start))
    assert x_t[0, 0, 0, 0] < x_t[1, 0, 0, 0]


def test_q_step_matches_one_forward_step() -> None:
    schedule = DiffusionSchedule(50)
    x = torch.rand(1, 1, 4, 4)
    noise = torch.randn_like(x)
    out = schedule.q_step(x, torch.tensor([7]), noise)
    beta = schedule.betas[6]
    assert torch.allclose(out, (1 - beta).sqrt() * x + beta.sqrt() * noise)


def test_step_tensor_shape_checked() -> None:
    schedule = DiffusionSchedule(10)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\), but got \(3,\)"):
        schedule.q_sample(torch.zeros(2, 1, 2, 2), torch.tensor([1, 2, 3]), torch.zeros(2, 1, 2, 2))

"""The DDPM noise schedule and its closed-form steps (Ho et al., 2020).

Steps are numbered the paper's way: ``x_0`` is the clean image and ``x_t`` for
``t = 1 .. T`` the noised ones. Tensors of per-step terms are stored at index
``t - 1``, and the UNet is given ``t - 1`` as its timestep, the convention of MONAI
and diffusers. Every method takes ``t`` as a tensor of shape ``(B,)``, so each sample
of a batch may sit at its own step.

A chain of ``T`` steps can reproduce the noise levels of a longer reference chain
(``reference_T``, a multiple of ``T``): step ``k`` then has the cumulative noise of
reference step ``k * reference_T / T``, and its beta is derived from that
(timestep respacing, Nichol and Dhariwal, 2021). With ``T = 100`` and
``reference_T = 1000``, step 5 carries the noise of step 50 of the paper's chain.
"""

from __future__ import annotations

import torch


class DiffusionSchedule:
    """Linear betas, their cumulative products and the posterior terms, as float32 tensors."""

    def __init__(
        self,
        T: int = 1000,
        *,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        reference_T: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        reference_T = reference_T or T
        if T < 1 or reference_T % T:
            raise ValueError(f"reference_T must be a multiple of T, but got T={T}, reference_T={reference_T}")

        # 1. The reference chain: betas rise linearly from beta_start to beta_end.
        reference_betas = torch.linspace(beta_start, beta_end, reference_T, dtype=torch.float64)
        reference_alphas_cumprod = torch.cumprod(1.0 - reference_betas, dim=0)

        # 2. Keep every stride-th cumulative product and derive the betas that produce it.
        self.stride = reference_T // T
        alphas_cumprod = reference_alphas_cumprod[self.stride - 1 :: self.stride]
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        betas = 1.0 - alphas_cumprod / alphas_cumprod_prev

        # 3. Posterior q(x_{t-1} | x_t, x_0): variance beta_tilde_t and the two mean coefficients.
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        posterior_mean_coef1 = betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod)
        posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod)

        self.T = T
        self.reference_T = reference_T

        def as_tensor(values: torch.Tensor) -> torch.Tensor:
            return values.to(device=device, dtype=torch.float32)

        self.betas = as_tensor(betas)
        self.alphas_cumprod = as_tensor(alphas_cumprod)
        self.alphas_cumprod_prev = as_tensor(alphas_cumprod_prev)
        self.posterior_variance = as_tensor(posterior_variance)
        self.posterior_mean_coef1 = as_tensor(posterior_mean_coef1)
        self.posterior_mean_coef2 = as_tensor(posterior_mean_coef2)

    def to(self, device: torch.device | str) -> DiffusionSchedule:
        """Move every per-step tensor to ``device`` (in place) and return self."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    def reference_step(self, t: int) -> int:
        """Return the step of the reference chain whose noise level model step ``t`` carries."""
        return t * self.stride

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise ``x_0`` to step ``t``: sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4 of Ho et al.)."""
        alphas_cumprod = _per_sample(self.alphas_cumprod, t, x_start)
        return alphas_cumprod.sqrt() * x_start + (1.0 - alphas_cumprod).sqrt() * noise

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Take one forward step, x_{t-1} to x_t: sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps."""
        betas = _per_sample(self.betas, t, x_prev)
        return (1.0 - betas).sqrt() * x_prev + betas.sqrt() * noise

    def predict_start(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert q_sample for x_0 given the predicted noise eps_theta(x_t, t)."""
        alphas_cumprod = _per_sample(self.alphas_cumprod, t, x_t)
        return (x_t - (1.0 - alphas_cumprod).sqrt() * eps) / alphas_cumprod.sqrt()

    def p_sample(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        noise: torch.Tensor,
        *,
        clip: tuple[float, float] | None,
    ) -> torch.Tensor:
        """Draw x_{t-1} from p_theta(x_{t-1} | x_t) with variance beta_tilde_t (eq. 2 of the DDPM paper).

        ``eps`` is the UNet's noise prediction and ``noise`` the stochastic term, which
        may be Gaussian or simplex. The predicted ``x_0`` is clipped to the data range
        ``clip``. At ``t = 1`` the step is deterministic because beta_tilde_1 is 0.
        """
        # 1. Predict x_0 from the noise estimate and keep it inside the data range.
        pred_original_sample = self.predict_start(x_t, t, eps)
        if clip is not None:
            pred_original_sample = pred_original_sample.clamp(*clip)

        # 2. Posterior mean mu_tilde(x_t, x_0) and standard deviation sqrt(beta_tilde_t).
        mean = (
            _per_sample(self.posterior_mean_coef1, t, x_t) * pred_original_sample
            + _per_sample(self.posterior_mean_coef2, t, x_t) * x_t
        )
        std = _per_sample(self.posterior_variance, t, x_t).sqrt()

        # 3. x_{t-1} = mu_tilde + sigma_t z.
        return mean + std * noise


def _per_sample(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Pick ``values[t - 1]`` for each sample and shape it to broadcast against ``like``."""
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must have shape ({like.shape[0]},), but got {tuple(t.shape)}")
    picked = values[t.to(values.device, torch.long) - 1]
    return picked.reshape(-1, *([1] * (like.ndim - 1)))

"""The mean-reverting SDE of IR-SDE (Luo et al., ICML 2023) and its few-step posterior sampler.

    dx = theta_t (mu - x) dt + sigma_t dw,   sigma_t^2 = 2 lambda^2 theta_t          (IR-SDE eq. 1)

Closed-form marginals from x0 (IR-SDE eq. 3-5), with thetabar_t = sum_{i<=t} theta_i:
    m_t = mu + (x0 - mu) exp(-thetabar_t dt)
    v_t = lambda^2 (1 - exp(-2 thetabar_t dt))

Sampling starts at an intermediate time t_start in the degraded domain (DTDM): x = mu + sqrt(v) z,
rather than at t = T, and steps on an N-point grid with the optimal reverse state of IR-SDE
Prop. 3.2, generalised from one step to a jump t -> s (s < t):
    A = exp(-(thetabar_t - thetabar_s) dt), B = exp(-thetabar_t dt), C = exp(-thetabar_s dt)
    x_s = mu + A (1 - C^2)/(1 - B^2) (x_t - mu) + C (1 - A^2)/(1 - B^2) (x0 - mu)
          + lambda sqrt((1 - A^2)(1 - C^2)/(1 - B^2)) z
No network lives here: the sampler takes a denoiser callable (x_t, t) -> x0 (k-diffusion style).

``noise_scale`` (optional, shaped like mu) makes lambda per element: lambda x noise_scale. With
the data's own noise std there, the SDE's stationary noise has the degradation's scale
everywhere (a data value at ISO 100 and one at ISO 102400 differ by two decades in noise).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


class IRSDEScheduler:
    def __init__(self, num_train_timesteps: int = 100, t_start: int = 70, lam: float = 0.25,
                 eps: float = 0.005):
        self.T = num_train_timesteps
        self.t_start = t_start
        self.lam = lam
        # Cosine theta schedule (IR-SDE code: theta_i = 1 - alphabar_i, Nichol & Dhariwal s = 0.008).
        steps = torch.arange(self.T + 2, dtype=torch.float64)
        alphabar = torch.cos(((steps / (self.T + 1)) + 0.008) / 1.008 * math.pi / 2) ** 2
        theta = 1 - alphabar / alphabar[0]
        self.thetabar = torch.cumsum(theta, 0) - theta[0]        # thetabar_0 = 0
        # dt such that at t = T the mean has reverted to within eps of mu.
        self.dt = -math.log(eps) / float(self.thetabar[self.T])

    # --- closed form -------------------------------------------------------------------------

    def decay(self, t: torch.Tensor | int) -> torch.Tensor:
        """exp(-thetabar_t dt): how much of (x0 - mu) is left in the mean at time t."""
        return torch.exp(-self.thetabar[torch.as_tensor(t)] * self.dt).float()

    def marginal(self, x0: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                 noise_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(m_t, v_t) of the forward SDE, per sample; t is a (B,) long tensor."""
        b = self.decay(t).view(-1, *[1] * (x0.dim() - 1)).to(x0)
        return mu + (x0 - mu) * b, self._lam(noise_scale) ** 2 * (1 - b ** 2)

    def _lam(self, noise_scale: torch.Tensor | None) -> torch.Tensor | float:
        return self.lam if noise_scale is None else self.lam * noise_scale

    def timesteps(self, num_steps: int) -> list[int]:
        """The N-step grid from t_start down to 0 (inclusive of both ends); no steps: t_start alone."""
        if num_steps < 0:
            raise ValueError("num_steps must be >= 0")
        if num_steps == 0:
            return [self.t_start]
        return [round(self.t_start * k / num_steps) for k in range(num_steps, -1, -1)]

    def start_state(self, mu: torch.Tensor, noise: torch.Tensor | None,
                    noise_scale: torch.Tensor | None = None) -> torch.Tensor:
        """DTDM start: the degraded latent with the SDE's noise at t_start (none: its mean)."""
        if noise is None:
            return mu
        return mu + self._lam(noise_scale) * math.sqrt(1 - float(self.decay(self.t_start)) ** 2) * noise

    def step(self, x0: torch.Tensor, t: int, s: int, x_t: torch.Tensor, mu: torch.Tensor,
             noise: torch.Tensor | None, noise_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior step t -> s given the predicted x0 (generalised Prop. 3.2, see module doc)."""
        if s == 0:
            return x0
        A = float(torch.exp(-(self.thetabar[t] - self.thetabar[s]) * self.dt))
        B = float(self.decay(t))
        C = float(self.decay(s))
        mean = mu + A * (1 - C ** 2) / (1 - B ** 2) * (x_t - mu) + C * (1 - A ** 2) / (1 - B ** 2) * (x0 - mu)
        if noise is None:
            return mean
        return mean + self._lam(noise_scale) * math.sqrt((1 - A ** 2) * (1 - C ** 2) / (1 - B ** 2)) * noise

    def time_input(self, t: int | torch.Tensor) -> torch.Tensor:
        """The network's time input in [0, 1]."""
        return torch.as_tensor(t, dtype=torch.float32) / self.T


def sample(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mu: torch.Tensor,
           scheduler: IRSDEScheduler, num_steps: int, noises: list[torch.Tensor] | None = None,
           noise_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Few-step IR-SDE posterior sampling from the DTDM start.

    ``denoiser(x_t, t_input) -> x0``. ``noises`` holds num_steps tensors shaped like mu: the
    first perturbs the start state, the others the posterior steps. With one step the x0 jump is
    deterministic (the start state is mu itself), whatever ``noises`` says. With none, the result
    is mu: the degraded latent, not denoised (``--steps 0``: what the diffusion adds, measured).
    """
    grid = scheduler.timesteps(num_steps)
    stochastic = num_steps > 1 and noises is not None
    x = scheduler.start_state(mu, noises[0] if stochastic else None, noise_scale)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        t_in = scheduler.time_input(t).to(mu.device).expand(mu.shape[0])
        x0 = denoiser(x, t_in)
        x = scheduler.step(x0, t, s, x, mu, noises[i + 1] if stochastic and s > 0 else None, noise_scale)
    return x

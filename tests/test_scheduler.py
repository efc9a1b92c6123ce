"""The IR-SDE scheduler: closed-form marginals and the few-step posterior sampler."""
import math

import pytest
import torch

from rawrestore.schedulers import IRSDEScheduler, sample


def simulate_forward(sched: IRSDEScheduler, x0: torch.Tensor, mu: torch.Tensor, t_end: int,
                     substeps: int = 10) -> torch.Tensor:
    """Euler-Maruyama on dx = theta (mu - x) dt + sqrt(2 lambda^2 theta) dw over the discrete schedule."""
    gen = torch.Generator().manual_seed(0)
    x = x0.clone()
    theta = torch.diff(sched.thetabar)  # theta_i for steps 1..T
    for i in range(t_end):
        h = float(theta[i]) * sched.dt / substeps  # theta_i dt split into substeps
        for _ in range(substeps):
            x = x + h * (mu - x) + math.sqrt(2 * sched.lam ** 2 * h) * torch.randn(x.shape, generator=gen)
    return x


@pytest.mark.parametrize("t", [10, 35, 70, 100])
def test_closed_form_marginals_match_simulated_sde(t):
    sched = IRSDEScheduler()
    n = 40_000
    x0 = torch.full((n,), 1.0)
    mu = torch.full((n,), -0.5)
    simulated = simulate_forward(sched, x0, mu, t)
    mean, var = sched.marginal(x0[:1], mu[:1], torch.tensor([t]))
    assert simulated.mean().item() == pytest.approx(mean.item(), abs=0.01)
    assert simulated.var().item() == pytest.approx(float(var), rel=0.03)


def test_mean_has_reverted_to_mu_at_the_end():
    sched = IRSDEScheduler()
    assert float(sched.decay(sched.T)) == pytest.approx(0.005, rel=1e-3)
    assert float(sched.decay(0)) == 1.0


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_oracle_x0_sampler_returns_x0(steps):
    sched = IRSDEScheduler()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 8, 8, generator=gen)
    mu = x0 + 0.3 * torch.randn(x0.shape, generator=gen)
    seen_times = []

    def oracle(x_t, t):
        seen_times.append(float(t[0]))
        return x0

    noises = [torch.randn(x0.shape, generator=gen) for _ in range(steps)]
    out = sample(oracle, mu, sched, steps, noises)
    torch.testing.assert_close(out, x0)
    assert len(seen_times) == steps  # one network evaluation per step
    assert seen_times[0] == pytest.approx(sched.t_start / sched.T)


def test_posterior_step_preserves_the_forward_marginal():
    """From the true marginal at t, the posterior step with the true x0 lands on the marginal at s."""
    sched = IRSDEScheduler()
    n = 100_000
    gen = torch.Generator().manual_seed(2)
    x0, mu = torch.full((n,), 0.8), torch.full((n,), 0.1)
    t, s = 70, 35
    m_t, v_t = sched.marginal(x0[:1], mu[:1], torch.tensor([t]))
    x_t = m_t + v_t.sqrt() * torch.randn(n, generator=gen)
    x_s = sched.step(x0, t, s, x_t, mu, torch.randn(n, generator=gen))
    m_s, v_s = sched.marginal(x0[:1], mu[:1], torch.tensor([s]))
    assert x_s.mean().item() == pytest.approx(m_s.item(), abs=2e-3)
    assert x_s.var().item() == pytest.approx(float(v_s), rel=0.02)


def test_one_step_is_deterministic():
    sched = IRSDEScheduler()
    mu = torch.randn(1, 4, 8, 8)
    net = lambda x_t, t: 0.5 * x_t  # noqa: E731 - any deterministic denoiser
    a = sample(net, mu, sched, 1, [torch.randn_like(mu)])
    b = sample(net, mu, sched, 1, [torch.randn_like(mu)])
    torch.testing.assert_close(a, b)


def test_step_grid():
    sched = IRSDEScheduler()
    for n in (1, 2, 4, 8):
        grid = sched.timesteps(n)
        assert grid[0] == sched.t_start and grid[-1] == 0 and len(grid) == n + 1
        assert all(a > b for a, b in zip(grid, grid[1:]))


def test_zero_steps_return_the_degraded_latent_without_calling_the_denoiser():
    def denoiser(x_t, t):
        raise AssertionError("no step, no denoiser call")

    mu = torch.randn(1, 4, 8, 8)
    assert IRSDEScheduler().timesteps(0) == [IRSDEScheduler().t_start]
    torch.testing.assert_close(sample(denoiser, mu, IRSDEScheduler(), 0, []), mu)
    with pytest.raises(ValueError):
        IRSDEScheduler().timesteps(-1)

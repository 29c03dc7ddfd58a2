"""The Gaussian-mixture ground truth (nanodiffusion.core.gmm), the sampler error measured on it
(nanodiffusion.metrics.sampler_error) and the benchmark that writes it into the docs (bench/samplers.py)."""

import math

import pytest
import torch

import samplers as bench_samplers  # bench/samplers.py, on the path through conftest.py
from nanodiffusion.core.gmm import GaussianMixture, mixture_2d, mixture_nd, sliced_wasserstein, sw_noise_floor
from nanodiffusion.core.samplers import SAMPLERS
from nanodiffusion.core.schedules import exponential_sigmas
from nanodiffusion.metrics import sampler_error

DETERMINISTIC = [name for name, info in SAMPLERS.items() if not info.stochastic]
STOCHASTIC = [name for name, info in SAMPLERS.items() if info.stochastic]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: intra-op threads only wait on each other on a shared 2-core machine."""
    with sampler_error.threads_for(0):
        yield


def noise(n, d, seed=0):
    return sampler_error.SIGMA_MAX * torch.randn(
        n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def sample(mixture, name, x, steps, seed=1):
    return sampler_error.run_sampler(mixture, name, x, steps, seed)[0]


def slope(steps, errors):
    """Least-squares order p in error ~ steps^-p."""
    lx = torch.tensor(steps, dtype=torch.float64).log()
    ly = torch.tensor(errors, dtype=torch.float64).log()
    lx = lx - lx.mean()
    return -float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


# --- the closed forms -----------------------------------------------------------------------------
def test_single_gaussian_denoiser_is_the_conditioning_formula():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(1, 3, generator=g, dtype=torch.float64)
    var = torch.tensor([[0.04, 0.25, 1.0]], dtype=torch.float64)
    gm = GaussianMixture([1.0], mu, var)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64) * 2
    S, eye = torch.diag(var[0]), torch.eye(3, dtype=torch.float64)
    shared = torch.full((5,), 0.7, dtype=torch.float64)
    per_row = torch.tensor([0.01, 0.1, 0.5, 2.0, 30.0], dtype=torch.float64)
    for sigma in (shared, per_row):
        want = torch.stack(
            [
                mu[0] + S @ torch.linalg.solve(S + s**2 * eye, xi - mu[0])
                for xi, s in zip(x, sigma, strict=True)
            ]
        )
        torch.testing.assert_close(gm.denoiser(x, sigma), want)


@pytest.mark.parametrize("mixture", [mixture_2d(), mixture_nd(d=5, seed=3)], ids=["ring", "5d"])
@pytest.mark.parametrize(
    "sigma", [0.03, 0.3, [0.02, 0.1, 0.3, 1.0, 5.0, 40.0]], ids=["0.03", "0.3", "per-row"]
)
def test_score_is_the_gradient_of_log_prob_and_tweedie(mixture, sigma):
    x = mixture.sample(6, torch.Generator().manual_seed(1)) + 0.1
    x.requires_grad_(True)
    mixture.log_prob(x, sigma).sum().backward()
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    with torch.no_grad():
        torch.testing.assert_close(mixture.score(x, sigma), x.grad)
        torch.testing.assert_close((mixture.denoiser(x, s.reshape(-1).expand(6)) - x) / s**2, x.grad)


def test_mixture_denoiser_matches_importance_sampling():
    """E[x0 | x] = E_p[x0 N(x; x0, s^2)] / E_p[N(x; x0, s^2)], estimated over draws x0 ~ p."""
    gm = GaussianMixture(
        [0.2, 0.5, 0.3], [[-1.0, 0.0], [0.5, 0.5], [0.0, -1.0]], [[0.05, 0.2], [0.1, 0.1], [0.3, 0.02]]
    )
    x0 = gm.sample(400_000, torch.Generator().manual_seed(0))
    sigma = 0.5
    x = torch.tensor([[0.0, 0.0], [-1.0, 0.5], [0.3, -0.8], [1.5, 1.5]], dtype=torch.float64)
    d = gm.denoiser(x, torch.full((4,), sigma, dtype=torch.float64))
    for xi, di in zip(x, d, strict=True):
        logw = -((x0 - xi) ** 2).sum(1) / (2 * sigma**2)
        w = torch.softmax(logw, 0)[:, None]
        est = (w * x0).sum(0)
        stderr = ((w**2 * (x0 - est) ** 2).sum(0)).sqrt()  # delta-method error of a self-normalised mean
        assert ((di - est).abs() <= 5 * stderr + 1e-3).all(), (di, est, stderr)


def test_mixtures_are_seeded_and_in_range():
    a, b = mixture_nd(64), mixture_nd(64)
    assert torch.equal(a.means, b.means) and torch.equal(a.variances, b.variances)
    for gm in (mixture_2d(), a):
        x = gm.sample(4000, torch.Generator().manual_seed(0))
        assert x.abs().max() < 1.3 and x.abs().mean() > 0.2


def test_sliced_wasserstein_sees_a_shift_not_resampling():
    gm = mixture_2d()
    g = torch.Generator().manual_seed(0)
    a, b = gm.sample(2000, g), gm.sample(2000, g)
    floor, spread = sw_noise_floor(gm, 2000, a, repeats=5)
    assert sliced_wasserstein(a, b) < 0.05 and floor < 0.05 and spread < floor
    assert sliced_wasserstein(a, gm.shifted(0.3).sample(2000, g)) > 0.2
    assert sliced_wasserstein(a, a) == 0


# --- samplers against the exact ODE solution -------------------------------------------------------
@pytest.fixture(scope="module")
def ring_ode():
    """The ring, 256 starting points, and Heun at 1000 Karras steps from them (checked vs 500)."""
    gm, x = mixture_2d(), noise(256, 2)
    ref = sample(gm, "heun", x, 1000)
    assert sampler_error.rms(ref, sample(gm, "heun", x, 500)) < 1e-5
    return gm, x, ref


@pytest.mark.parametrize(("name", "lo", "hi"), [("euler", 0.8, 1.3), ("heun", 1.6, 2.6)])
def test_convergence_order(ring_ode, name, lo, hi):
    """Slope of log error vs log steps on Karras sigmas.

    The Karras levels are a smooth map of a uniform grid, so the order shows up in the step
    count directly, and the final jump to sigma = 0 is the same x0 = D(x, 0.002) for every
    run, a smooth map that keeps the order. It starts at 20 steps: at 10, Heun's trapezoid
    steps over the narrow components are still pre-asymptotic (its error falls 9x from 10 to
    20 steps, slope ~3), which would inflate the fit without saying anything about the order.
    """
    gm, x, ref = ring_ode
    steps = [20, 28, 40, 56, 80]
    errors = [sampler_error.rms(sample(gm, name, x, n), ref) for n in steps]
    assert lo <= slope(steps, errors) <= hi, errors


def test_dpmpp_2m_beats_euler(ring_ode):
    """DPM-Solver++(2M) against Euler at equal NFE.

    At 10 NFE it wins on log-uniform sigmas (equal steps in lambda = -log sigma, the spacing
    Lu et al. 2022 analyse) but not on Karras rho = 7 sigmas, whose last two steps (0.117 ->
    0.020 -> 0.002 at 10 steps) are long in lambda (h = 1.8, 2.3) exactly where x0_hat moves
    most (sigma near the components' std 0.05): its linear extrapolation of x0_hat in lambda,
    with weight 1 + 1/(2r) > 1, overshoots there (local errors 0.10 and 0.04 against Euler's
    0.035 and 0.005), and it ends at 1.1e-1 against Euler's 5.3e-2. That is the method, not
    a bug: the update matches Lu et al.'s Algorithm 2 term by term. From 20 NFE on it wins
    on Karras sigmas too.
    """
    gm, x, ref = ring_ode  # the same ODE from 80 to 0.002, whatever the spacing

    def log_uniform(n):
        return exponential_sigmas(n, 0.002, 80.0)

    for spacing, nfe in ((log_uniform, 10), (sampler_error.karras, 20)):
        err = {}
        for name in ("euler", "dpm++2m"):
            levels = spacing(SAMPLERS[name].steps_for_nfe(nfe))
            err[name] = sampler_error.rms(SAMPLERS[name].fn(gm.denoiser, x, levels), ref)
        assert err["dpm++2m"] < 0.9 * err["euler"], (spacing.__name__, nfe, err)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_ode_error_shrinks_with_nfe(ring_ode, name):
    gm, x, ref = ring_ode
    errors = [
        sampler_error.rms(sample(gm, name, x, SAMPLERS[name].steps_for_nfe(nfe)), ref)
        for nfe in (10, 50, 200)
    ]
    assert errors[0] > errors[1] > errors[2], errors


@pytest.fixture(scope="module")
def ring_sw():
    gm, n = mixture_2d(), 4000
    truth = gm.sample(n, torch.Generator().manual_seed(1))
    return gm, noise(n, 2, seed=2), truth, sw_noise_floor(gm, n, truth)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_distribution_error_shrinks_with_nfe(ring_sw, name):
    """5 -> 200 NFE must close more than the noise floor's spread (std over true-vs-true draws)."""
    gm, x, truth, (floor, spread) = ring_sw
    sw = [
        sliced_wasserstein(sample(gm, name, x, SAMPLERS[name].steps_for_nfe(nfe)), truth) for nfe in (5, 200)
    ]
    assert sw[0] - sw[1] > 3 * spread, (sw, floor, spread)
    assert sw[1] < floor + 5 * spread, (sw, floor, spread)


# --- the benchmark --------------------------------------------------------------------------------
def test_quick_run_writes_between_the_markers(tmp_path, capsys):
    doc = tmp_path / "samplers.md"
    doc.write_text(
        "# Samplers\n\nprose before\n\n<!-- bench-samplers:start -->\nold table\n"
        "<!-- bench-samplers:end -->\n\nprose after\n"
    )
    problems = bench_samplers.run(quick=True, out_doc=doc, image_dir=tmp_path / "img", progress=False)
    text = doc.read_text()
    assert text.startswith("# Samplers\n\nprose before\n\n<!-- bench-samplers:start -->\n")
    assert text.endswith("<!-- bench-samplers:end -->\n\nprose after\n")
    assert "old table" not in text and "| dpm++2m |" in text and "noise floor" in text
    assert "At 10 NFE the best sampler is" in text
    assert (tmp_path / "img" / "samplers_gmm.png").stat().st_size > 10_000
    for rows in problems[0].rows.values():
        assert all(r["nfe"] == r["expected_nfe"] <= r["budget"] for r in rows)
        assert all(math.isfinite(r["sw"]) for r in rows)


def test_quick_run_creates_a_missing_doc(tmp_path):
    doc = tmp_path / "new.md"
    bench_samplers.run(
        samplers=["euler", "ddpm"], quick=True, out_doc=doc, image_dir=tmp_path, progress=False
    )
    text = doc.read_text()
    assert text.startswith(bench_samplers.MARK_START + "\n")
    assert text.endswith(bench_samplers.MARK_END + "\n")


def test_the_library_run_prints_the_tables_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """`nanodiff bench-samplers` measures and prints; only bench/samplers.py writes files."""
    monkeypatch.chdir(tmp_path)
    problems = sampler_error.run(samplers=["euler", "ddpm"], quick=True, progress=False)
    out = capsys.readouterr().out
    assert "| euler |" in out and "| ddpm |" in out and "noise floor" in out
    assert "At 10 NFE the best sampler is" in out
    assert [p.budgets for p in problems] == [[5, 10]] and list(problems[0].rows) == ["euler", "ddpm"]
    assert list(tmp_path.iterdir()) == []

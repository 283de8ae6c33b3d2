"""Each loss against a plain re-statement of its paper's formula, plus the properties the papers imply.

The references below are written independently of the library: explicit Python loops over
samples, dimensions and patches in float64 numpy, following the papers / official code
(VICReg: facebookresearch/vicreg main_vicreg.py; SimCLR: NT-Xent, Chen et al. 2020 eq. 1;
SimSiam: Chen & He 2021 eq. 1-2; MAE: He et al. 2022, models_mae.forward_loss).

Tolerances: float64 inputs are compared with rtol 1e-10, atol 1e-12 (the loops and the vectorised
code differ only in summation order), which needs the losses to keep float64 as float64;
float32 inputs with rtol 1e-5, atol 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_toolkit.losses import mae_loss, nt_xent_loss, simsiam_loss, vicreg_loss

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}
DTYPES = [torch.float64, torch.float32]


def randn(*shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def close(actual, expected, dtype):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    return torch.allclose(torch.as_tensor(actual).detach().double(), expected, **TOL[dtype])


# --------------------------------------------------------------------------------------------------
# References (float64 numpy, loops)
# --------------------------------------------------------------------------------------------------
def ref_vicreg_terms(z_a, z_b):
    """VICReg terms: invariance, variance, covariance, each as the paper's code computes it."""
    a, b = z_a.double().numpy(), z_b.double().numpy()
    n, d = a.shape
    invariance = sum((a[i, j] - b[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def std_and_cov(z):
        mean = [sum(z[i, j] for i in range(n)) / n for j in range(d)]
        c = [[z[i, j] - mean[j] for j in range(d)] for i in range(n)]
        # unbiased variance per dimension (1/(N-1)), epsilon 1e-4 inside the square root
        std = [math.sqrt(sum(c[i][j] ** 2 for i in range(n)) / (n - 1) + 1e-4) for j in range(d)]
        off = 0.0
        for j in range(d):
            for k in range(d):
                if j != k:
                    cov_jk = sum(c[i][j] * c[i][k] for i in range(n)) / (n - 1)
                    off += cov_jk**2
        return std, off / d

    std_a, cov_a = std_and_cov(a)
    std_b, cov_b = std_and_cov(b)
    variance = (sum(max(0.0, 1 - s) for s in std_a) / d) / 2 + (sum(max(0.0, 1 - s) for s in std_b) / d) / 2
    covariance = cov_a + cov_b
    return invariance, variance, covariance


def ref_vicreg(z_a, z_b, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    inv, var, cov = ref_vicreg_terms(z_a, z_b)
    return sim_coeff * inv + std_coeff * var + cov_coeff * cov


def ref_nt_xent(z_a, z_b, temperature):
    """NT-Xent over 2N samples: anchor k's positive is its other view, the other 2N-2 are negatives."""
    z = np.concatenate([z_a.double().numpy(), z_b.double().numpy()])
    n2 = z.shape[0]
    n = n2 // 2
    z = [v / math.sqrt(sum(x * x for x in v)) for v in z]
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        sim = [float(np.dot(z[i], z[k])) / temperature for k in range(n2)]
        denom = sum(math.exp(sim[k]) for k in range(n2) if k != i)
        total += -math.log(math.exp(sim[pos]) / denom)
    return total / n2


def ref_simsiam(p_a, p_b, z_a, z_b):
    """D(p, z) = -p/|p| · z/|z|, symmetrised: L = D(p_a, z_b)/2 + D(p_b, z_a)/2, averaged over the batch."""

    def d(p, z):
        p, z = p.double().numpy(), z.double().numpy()
        vals = [-np.dot(p[i], z[i]) / (np.linalg.norm(p[i]) * np.linalg.norm(z[i])) for i in range(len(p))]
        return sum(vals) / len(vals)

    return d(p_a, z_b) / 2 + d(p_b, z_a) / 2


def ref_mae(pred, target, mask, norm_pix):
    """Per-patch MSE (mean over the P pixels), averaged over masked patches only."""
    pred, target, mask = pred.double().numpy(), target.double().numpy(), mask.double().numpy()
    bsz, length, p = pred.shape
    total, count = 0.0, 0.0
    for b in range(bsz):
        for l in range(length):
            t = target[b, l]
            if norm_pix:
                mean = sum(t) / p
                var = sum((x - mean) ** 2 for x in t) / (p - 1)  # unbiased, as torch.var in MAE
                t = [(x - mean) / math.sqrt(var + 1e-6) for x in t]
            mse = sum((pred[b, l, k] - t[k]) ** 2 for k in range(p)) / p
            total += mse * mask[b, l]
            count += mask[b, l]
    return total / count


# --------------------------------------------------------------------------------------------------
# VICReg
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,seed", [(8, 16, 0), (16, 32, 1), (12, 24, 2)])
def test_vicreg_matches_reference(dtype, n, d, seed):
    # Scale 0.5 puts some dimensions' std below 1 and some above, so the hinge is exercised on both sides.
    z_a = randn(n, d, seed=seed, dtype=dtype) * torch.linspace(0.3, 1.5, d, dtype=dtype)
    z_b = z_a + 0.5 * randn(n, d, seed=seed + 100, dtype=dtype)
    assert close(vicreg_loss(z_a, z_b), ref_vicreg(z_a, z_b), dtype)


def test_vicreg_coefficients_and_defaults():
    z_a, z_b = randn(8, 16, seed=3), randn(8, 16, seed=4)
    assert close(vicreg_loss(z_a, z_b), ref_vicreg(z_a, z_b, 25.0, 25.0, 1.0), torch.float64)
    got = vicreg_loss(z_a, z_b, sim_coeff=2.0, std_coeff=3.0, cov_coeff=0.5)
    assert close(got, ref_vicreg(z_a, z_b, 2.0, 3.0, 0.5), torch.float64)


def test_vicreg_terms_match_reference_and_sum_to_loss():
    z_a, z_b = randn(10, 20, seed=5), randn(10, 20, seed=6) * 0.7
    coeffs = dict(sim_coeff=7.0, std_coeff=11.0, cov_coeff=3.0)
    loss, terms = vicreg_loss(z_a, z_b, return_terms=True, **coeffs)
    assert set(terms) == {"invariance", "variance", "covariance"}
    inv, var, cov = ref_vicreg_terms(z_a, z_b)
    assert close(terms["invariance"], inv, torch.float64)
    assert close(terms["variance"], var, torch.float64)
    assert close(terms["covariance"], cov, torch.float64)
    recombined = 7.0 * terms["invariance"] + 11.0 * terms["variance"] + 3.0 * terms["covariance"]
    assert close(loss, recombined, torch.float64)
    assert close(loss, vicreg_loss(z_a, z_b, **coeffs), torch.float64)


def test_vicreg_is_symmetric():
    z_a, z_b = randn(8, 16, seed=7), randn(8, 16, seed=8) * 0.5
    assert close(vicreg_loss(z_a, z_b), vicreg_loss(z_b, z_a), torch.float64)


def test_vicreg_variance_term_zero_when_every_std_at_least_one():
    z_a, z_b = 5 * randn(16, 16, seed=9), 5 * randn(16, 16, seed=10)
    assert z_a.std(0).min() >= 1 and z_b.std(0).min() >= 1  # precondition of the test
    _, terms = vicreg_loss(z_a, z_b, return_terms=True)
    assert terms["variance"] == 0


def test_vicreg_collapse_gives_the_full_variance_penalty():
    # Every sample identical: std = sqrt(1e-4) = 0.01 on every dim, hinge = 0.99 per branch.
    z = torch.ones(8, 16, dtype=torch.float64)
    loss, terms = vicreg_loss(z, z, return_terms=True)
    assert close(terms["variance"], 0.99, torch.float64)
    assert close(terms["invariance"], 0.0, torch.float64) and close(terms["covariance"], 0.0, torch.float64)
    assert close(loss, 25.0 * 0.99, torch.float64)


def test_vicreg_gather_flag_is_a_no_op_in_one_process():
    z_a, z_b = randn(8, 16, seed=11), randn(8, 16, seed=12)
    assert close(vicreg_loss(z_a, z_b, gather=False), vicreg_loss(z_a, z_b, gather=True), torch.float64)


# --------------------------------------------------------------------------------------------------
# SimCLR NT-Xent
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,temperature,seed", [(8, 16, 0.1, 0), (16, 32, 0.5, 1), (12, 16, 0.07, 2)])
def test_nt_xent_matches_reference(dtype, n, d, temperature, seed):
    z_a = randn(n, d, seed=seed, dtype=dtype)
    z_b = z_a + 0.8 * randn(n, d, seed=seed + 100, dtype=dtype)
    got = nt_xent_loss(z_a, z_b, temperature=temperature)
    assert close(got, ref_nt_xent(z_a, z_b, temperature), dtype)


def test_nt_xent_default_temperature_is_0_1():
    z_a, z_b = randn(8, 16, seed=3), randn(8, 16, seed=4)
    assert close(nt_xent_loss(z_a, z_b), ref_nt_xent(z_a, z_b, 0.1), torch.float64)


def test_nt_xent_is_symmetric_and_scale_invariant():
    z_a, z_b = randn(8, 16, seed=5), randn(8, 16, seed=6)
    assert close(nt_xent_loss(z_a, z_b), nt_xent_loss(z_b, z_a), torch.float64)
    # L2 normalisation comes first, so the loss ignores each embedding's norm.
    scale = torch.rand(8, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    assert close(nt_xent_loss(z_a * scale, z_b), nt_xent_loss(z_a, z_b), torch.float64)


def test_nt_xent_excludes_self_similarity():
    # With z_a = z_b and orthogonal samples: positive sim 1, the 2N-2 negatives sim 0, self excluded:
    # loss = -log(e^{1/T} / (e^{1/T} + (2N-2))). Counting self would add e^{1/T} to the denominator.
    n, t = 8, 0.5
    z = torch.eye(n, 16, dtype=torch.float64)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * n - 2))
    assert close(nt_xent_loss(z, z, temperature=t), expected, torch.float64)


def test_nt_xent_gather_flag_is_a_no_op_in_one_process():
    z_a, z_b = randn(8, 16, seed=7), randn(8, 16, seed=8)
    assert close(nt_xent_loss(z_a, z_b, gather=False), nt_xent_loss(z_a, z_b), torch.float64)


# --------------------------------------------------------------------------------------------------
# SimSiam
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,seed", [(8, 16, 0), (16, 32, 1)])
def test_simsiam_matches_reference(dtype, n, d, seed):
    p_a, p_b = randn(n, d, seed=seed, dtype=dtype), randn(n, d, seed=seed + 1, dtype=dtype)
    z_a, z_b = randn(n, d, seed=seed + 2, dtype=dtype), randn(n, d, seed=seed + 3, dtype=dtype)
    assert close(simsiam_loss(p_a, p_b, z_a, z_b), ref_simsiam(p_a, p_b, z_a, z_b), dtype)


def test_simsiam_is_symmetric():
    p_a, p_b, z_a, z_b = (randn(8, 16, seed=s) for s in range(4))
    assert close(simsiam_loss(p_a, p_b, z_a, z_b), simsiam_loss(p_b, p_a, z_b, z_a), torch.float64)


def test_simsiam_is_minus_one_when_predictions_match_targets():
    z_a, z_b = randn(8, 16, seed=5), randn(8, 16, seed=6)
    # p_a predicts z_b and p_b predicts z_a; cosine ignores scale.
    assert close(simsiam_loss(z_b.clone(), z_a.clone(), z_a, z_b), -1.0, torch.float64)
    assert close(simsiam_loss(3 * z_b, 0.5 * z_a, z_a, z_b), -1.0, torch.float64)


def test_simsiam_stop_gradient_on_z():
    p_a, p_b, z_a, z_b = (randn(8, 16, seed=s).requires_grad_() for s in range(10, 14))
    simsiam_loss(p_a, p_b, z_a, z_b).backward()
    for z in (z_a, z_b):
        assert z.grad is None or torch.count_nonzero(z.grad) == 0
    for p in (p_a, p_b):
        assert p.grad is not None and p.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------
# MAE
# --------------------------------------------------------------------------------------------------
def mae_inputs(b=4, length=16, p=12, seed=0, dtype=torch.float64, mask_ratio=0.75):
    pred = randn(b, length, p, seed=seed, dtype=dtype)
    target = 3 * randn(b, length, p, seed=seed + 1, dtype=dtype) + 2  # not already normalised
    # exactly mask_ratio of each row masked, as MAE's random_masking does
    g = torch.Generator().manual_seed(seed + 2)
    keep = int(length * (1 - mask_ratio))
    order = torch.rand(b, length, generator=g).argsort(dim=1)
    mask = torch.ones(b, length, dtype=dtype)
    mask.scatter_(1, order[:, :keep], 0.0)
    return pred, target, mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_mae_matches_reference(dtype, norm_pix, seed):
    pred, target, mask = mae_inputs(seed=seed, dtype=dtype)
    got = mae_loss(pred, target, mask, norm_pix=norm_pix)
    assert close(got, ref_mae(pred, target, mask, norm_pix), dtype)


def test_mae_norm_pix_is_the_default():
    pred, target, mask = mae_inputs(seed=3)
    assert close(mae_loss(pred, target, mask), ref_mae(pred, target, mask, True), torch.float64)


def test_mae_ignores_unmasked_patches():
    pred, target, mask = mae_inputs(seed=4)
    before = mae_loss(pred, target, mask)
    changed = pred + 100 * (1 - mask).unsqueeze(-1) * randn(*pred.shape, seed=99)
    assert not torch.equal(changed, pred)
    assert close(mae_loss(changed, target, mask), before, torch.float64)
    # ...while changing a masked patch does change it.
    changed_masked = pred + mask.unsqueeze(-1)
    assert not close(mae_loss(changed_masked, target, mask), before, torch.float64)


def test_mae_without_norm_pix_is_plain_mse_over_masked_patches():
    pred, target, _ = mae_inputs(seed=5)
    full = torch.ones(pred.shape[:2], dtype=pred.dtype)
    plain_mse = torch.nn.functional.mse_loss(pred, target)
    assert close(mae_loss(pred, target, full, norm_pix=False), plain_mse, torch.float64)
    # One masked patch: the loss is that patch's MSE, not diluted by the count of all patches.
    one = torch.zeros_like(full)
    one[2, 5] = 1
    expected = ((pred[2, 5] - target[2, 5]) ** 2).mean()
    assert close(mae_loss(pred, target, one, norm_pix=False), expected, torch.float64)


# --------------------------------------------------------------------------------------------------
# Precision: half-precision inputs (autocast) are computed in float32; float64 stays float64
# --------------------------------------------------------------------------------------------------
def _cases(dtype):
    z_a, z_b = randn(8, 16, seed=20, dtype=dtype), randn(8, 16, seed=21, dtype=dtype)
    p_a, p_b = randn(8, 16, seed=22, dtype=dtype), randn(8, 16, seed=23, dtype=dtype)
    pred, target, mask = mae_inputs(seed=24, dtype=dtype)
    return {
        "vicreg": (lambda: vicreg_loss(z_a, z_b), lambda: ref_vicreg(z_a, z_b)),
        "nt_xent": (lambda: nt_xent_loss(z_a, z_b), lambda: ref_nt_xent(z_a, z_b, 0.1)),
        "simsiam": (lambda: simsiam_loss(p_a, p_b, z_a, z_b), lambda: ref_simsiam(p_a, p_b, z_a, z_b)),
        "mae": (lambda: mae_loss(pred, target, mask), lambda: ref_mae(pred, target, mask, True)),
    }


@pytest.mark.parametrize("name", ["vicreg", "nt_xent", "simsiam", "mae"])
def test_float64_inputs_are_not_downcast(name):
    loss, ref = _cases(torch.float64)[name]
    out = loss()
    assert out.dtype == torch.float64, f"{name} returned {out.dtype} for float64 inputs (downcast?)"
    assert close(out, ref(), torch.float64)


@pytest.mark.parametrize("name", ["vicreg", "nt_xent", "simsiam", "mae"])
def test_bfloat16_inputs_are_computed_in_float32(name):
    # The reference sees the same bf16-rounded values, so only the arithmetic precision differs:
    # in bf16 (8-bit mantissa) VICReg's covariance or NT-Xent's logits would be off by ~1e-2.
    loss, ref = _cases(torch.bfloat16)[name]
    out = loss()
    assert out.dtype == torch.float32, f"{name} returned {out.dtype} for bfloat16 inputs"
    assert close(out, ref(), torch.float32)

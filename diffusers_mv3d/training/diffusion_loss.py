"""The foundation's diffusion loss (improved DDPM): the prediction's MSE (epsilon or v, optionally
min-SNR-gamma weighted) plus the variational-bound term that trains the learned variance.

Used by ``train_foundation``; pure functions of the noise schedule's constants (:class:`DiffusionTerms`).
"""

import math
from typing import Dict, Tuple

import torch



class DiffusionTerms:
    """Per-timestep constants of q(x_t | x_0) and the posterior q(x_{t-1} | x_t, x_0), in float64."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = alphas_cumprod.double()  # (T,)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        beta = 1.0 - abar / abar_prev
        self.sqrt_abar = abar.sqrt()
        self.sqrt_one_minus_abar = (1.0 - abar).sqrt()
        self.log_beta = beta.log()
        posterior_var = beta * (1.0 - abar_prev) / (1.0 - abar)
        # the t = 0 posterior variance is 0; use t = 1's, as improved DDPM does
        self.posterior_log_var = torch.cat([posterior_var[1:2], posterior_var[1:]]).log()
        self.posterior_mean_coef_x0 = beta * abar_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef_xt = (1.0 - abar_prev) * (1.0 - beta).sqrt() / (1.0 - abar)

    def at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Constant ``name`` at timesteps t [B] as a [B, 1, 1, 1] tensor of ``like``'s dtype/device."""
        return getattr(self, name)[t.cpu()].to(like.device, like.dtype).view(-1, 1, 1, 1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit images scaled to [-1, 1] under a Gaussian discretised into 256 bins (nats)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs


def model_log_variance(terms: DiffusionTerms, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log Sigma_theta = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2 (``learned_range``)."""
    frac = (v + 1.0) / 2.0
    return frac * terms.at("log_beta", t, v) + (1.0 - frac) * terms.at("posterior_log_var", t, v)


def predicted_x0_and_eps(
    terms: DiffusionTerms, prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x0, eps)`` implied by a model's ``prediction`` at ``x_t = a x0 + s eps`` (a = sqrt(abar), s = sqrt(1 - abar)).

    epsilon: x0 = (x_t - s eps) / a; v_prediction (v = a eps - s x0): x0 = a x_t - s v, eps = s x_t + a v
    (defined at zero SNR too, where a = 0).
    """
    a, s = terms.at("sqrt_abar", t, x_t), terms.at("sqrt_one_minus_abar", t, x_t)
    if prediction_type == "v_prediction":
        return a * x_t - s * prediction, s * x_t + a * prediction
    return (x_t - s * prediction) / a, prediction


def training_target(terms: DiffusionTerms, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """What channels 0-2 learn to predict: the noise (epsilon) or v = a eps - s x0 (v_prediction)."""
    if prediction_type == "v_prediction":
        return terms.at("sqrt_abar", t, x0) * noise - terms.at("sqrt_one_minus_abar", t, x0) * x0
    return noise


def min_snr_weights(terms: DiffusionTerms, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-image loss weights [B] of min-SNR-gamma (Hang et al. 2023, eq. 12): min(SNR, gamma) / SNR for an
    epsilon target, min(SNR, gamma) / (SNR + 1) for a v target (both equal gamma-clipped x0 weighting)."""
    snr = (terms.sqrt_abar[t.cpu()] / terms.sqrt_one_minus_abar[t.cpu()]) ** 2
    clipped = snr.clamp(max=gamma)
    weights = clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr
    return weights.to(t.device, torch.float32)


def vlb_bits_per_dim(
    terms: DiffusionTerms, x0_pred: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """L_t of the variational bound per image [B], in bits per dimension.

    KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) for t > 0; the decoder NLL -log p(x_0 | x_1) at t = 0.
    ``x0_pred`` is the model's x_0 estimate, ``v`` its variance interpolation.
    """
    model_mean = terms.at("posterior_mean_coef_x0", t, x_t) * x0_pred + terms.at("posterior_mean_coef_xt", t, x_t) * x_t
    model_log_var = model_log_variance(terms, v, t)
    true_mean = terms.at("posterior_mean_coef_x0", t, x_t) * x0 + terms.at("posterior_mean_coef_xt", t, x_t) * x_t
    true_log_var = terms.at("posterior_log_var", t, x_t)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
    return torch.where(t.to(x0.device) == 0, nll, kl)


def diffusion_loss(
    model_output: torch.Tensor,
    noise: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    terms: DiffusionTerms,
    vlb_weight: float,
    prediction_type: str = "epsilon",
    snr_gamma: float = 0.0,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Hybrid loss: mean w_t ||target - prediction||^2 + vlb_weight * T * mean L_t (prediction detached in L_t).

    ``model_output`` is [B, 6, H, W]: the prediction (epsilon or v) in channels 0-2, the variance
    interpolation v in 3-5. ``w_t`` is 1, or min-SNR-gamma's weight when ``snr_gamma > 0``.
    """
    prediction, v = model_output.float().split(x0.shape[1], dim=1)  # (B, 3, H, W) each
    target = training_target(terms, x0.float(), noise.float(), t, prediction_type)
    per_image = (prediction - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
    mse = per_image.mean()
    loss = (per_image * min_snr_weights(terms, t, snr_gamma, prediction_type)).mean() if snr_gamma > 0 else mse
    if vlb_weight <= 0:
        return loss, {"mse": mse.item(), "vlb": 0.0}
    num_timesteps = terms.sqrt_abar.shape[0]
    x0_pred, _ = predicted_x0_and_eps(terms, prediction.detach(), x_t.float(), t, prediction_type)
    vlb = vlb_bits_per_dim(terms, x0_pred, v, x0.float(), x_t.float(), t).mean()
    return loss + vlb_weight * num_timesteps * vlb, {"mse": mse.item(), "vlb": vlb.item()}

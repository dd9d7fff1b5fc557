"""Density models of deep features for DeepPrior-EG (Gao & Guo, Appl. Sci. 2025, Sections 3.2-3.3).

Each model is fitted once on per-pixel feature vectors ``[N, C]`` (float64, on the CPU, with torch or
scikit-learn) and then evaluated in torch, on any device, without calling scikit-learn again:

- :class:`GaussianDensity` (MGM, Eqs. 12-15): one Gaussian with a full covariance, shrunk towards a scaled
  identity so it stays invertible when there are fewer pixels than channels;
- :class:`MixtureDensity` (BGMM, Eqs. 17-18): scikit-learn's ``BayesianGaussianMixture`` (full covariances),
  whose ``score_samples`` is reproduced exactly in torch with a ``logsumexp`` over components.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.special import digamma

# A covariance whose condition number exceeds this is treated as singular: its log-density is
# dominated by rounding, worse still once evaluated in float32 on an accelerator.
_MAX_CONDITION = 1e10


def _check_features(features: torch.Tensor, min_rows: int) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a [N, C] tensor of per-pixel feature vectors, got {shape}")
    if features.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} feature vectors to fit the density, got {features.shape[0]}")
    x = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x


class _Cached:
    """Per-(device, dtype) copies of a density's torch parameters, made on first use."""

    def __init__(self) -> None:
        self._copies: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    def _params(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        key = (torch.device(device), dtype)
        if key not in self._copies:
            self._copies[key] = tuple(p.to(device=device, dtype=dtype) for p in self._params())
        return self._copies[key]


class GaussianDensity(_Cached):
    """Multivariate Gaussian model (MGM) of per-pixel feature vectors.

    ``mean`` (Eq. 12) and the unbiased covariance (Eq. 13) of the rows of ``features [N, C]``; the covariance
    is shrunk, ``(1 - s) * S + s * (tr(S) / C) * I``, with ``s`` the Ledoit-Wolf estimate when
    ``shrinkage is None``. (The paper uses the raw ``S``, which is singular when ``N <= C``, e.g. one
    7x7 ResNet feature map of 2048 channels; the shrunk estimate keeps Eq. 14 defined.)
    """

    def __init__(self, mean: torch.Tensor, covariance: torch.Tensor, shrinkage: float) -> None:
        super().__init__()
        self.mean = mean  # [C] float64, CPU
        self.covariance = covariance  # [C, C] float64, CPU
        self.shrinkage = shrinkage
        self.cholesky = torch.linalg.cholesky(covariance)  # [C, C] lower

    @classmethod
    def fit(cls, features: torch.Tensor, shrinkage: float | None = None) -> GaussianDensity:
        """Fit on ``features [N, C]`` (``N >= 2``); ``shrinkage`` in ``[0, 1]`` or ``None`` (Ledoit-Wolf)."""
        x = _check_features(features, min_rows=2)
        n, c = x.shape
        mean = x.mean(dim=0)
        centred = x - mean
        sample_cov = centred.T @ centred / (n - 1)
        if shrinkage is None:
            from sklearn.covariance import ledoit_wolf_shrinkage

            shrinkage = float(ledoit_wolf_shrinkage(x.numpy(), assume_centered=False))
        target_scale = float(torch.diagonal(sample_cov).mean())
        covariance = (1.0 - shrinkage) * sample_cov + shrinkage * target_scale * torch.eye(c, dtype=torch.float64)
        covariance = 0.5 * (covariance + covariance.T)
        eig = torch.linalg.eigvalsh(covariance)
        if not float(eig[0]) > float(eig[-1]) / _MAX_CONDITION:
            raise ValueError(
                f"the MGM covariance of {n} feature vectors in {c} channels is singular "
                f"(eigenvalues from {float(eig[0]):.3g} to {float(eig[-1]):.3g}, shrinkage={shrinkage:g}): "
                "use shrinkage=None (Ledoit-Wolf) or a shrinkage > 0, or fit on more images"
            )
        return cls(mean, covariance, float(shrinkage))

    @property
    def num_channels(self) -> int:
        return int(self.mean.shape[0])

    def _params(self) -> tuple[torch.Tensor, ...]:
        half_log_det = torch.log(torch.diagonal(self.cholesky)).sum()
        return self.mean, self.cholesky, half_log_det

    def log_prob(self, features: torch.Tensor) -> torch.Tensor:
        """Log-density (Eq. 14/15) of ``features [..., C]`` -> ``[...]``, on their device and dtype.

        ``log N(f) = -(C log 2pi + |L^-1 (f - mu)|^2) / 2 - sum(log diag L)`` with ``Sigma = L L^T``.
        """
        mean, chol, half_log_det = self._on(features.device, features.dtype)
        c = self.num_channels
        flat = (features.reshape(-1, c) - mean).T  # [C, M]
        z = torch.linalg.solve_triangular(chol, flat, upper=False)
        maha = (z * z).sum(dim=0)
        out = -0.5 * (c * math.log(2.0 * math.pi) + maha) - half_log_det
        return out.reshape(features.shape[:-1])


class MixtureDensity(_Cached):
    """Bayesian Gaussian mixture model (BGMM) of per-pixel feature vectors.

    Fitted with ``sklearn.mixture.BayesianGaussianMixture(covariance_type="full")`` (Dirichlet-process
    weight prior, so unneeded components get negligible weight: Section 3.3's automatic component
    selection). :meth:`log_prob` equals the fitted model's ``score_samples``: for the variational model
    that is ``logsumexp_k [log N(f | mu_k, Sigma_k) + b_k]`` where ``b_k`` holds ``E[log pi_k]`` and the
    Wishart-posterior corrections scikit-learn adds; those per-component constants are computed once here,
    so the torch evaluation needs no scikit-learn call.
    """

    def __init__(self, means: torch.Tensor, precisions_cholesky: torch.Tensor, offsets: torch.Tensor,
                 weights: torch.Tensor, covariances: torch.Tensor) -> None:
        super().__init__()
        self.means = means  # [K, C]
        self.precisions_cholesky = precisions_cholesky  # [K, C, C]: (f - mu_k) @ P_k is standard normal
        self.offsets = offsets  # [K]: log-weight + log|P_k| + variational constants
        self.weights = weights  # [K] posterior-mean mixture weights (informative only)
        self.covariances = covariances  # [K, C, C]

    @classmethod
    def fit(cls, features: torch.Tensor, n_components: int = 5, seed: int = 0, max_iter: int = 200) -> MixtureDensity:
        """Fit on ``features [N, C]`` (``N >= n_components``, at least 2)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import BayesianGaussianMixture

        x = _check_features(features, min_rows=max(2, n_components)).numpy()
        bgmm = BayesianGaussianMixture(
            n_components=n_components, covariance_type="full", max_iter=max_iter, random_state=seed
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            bgmm.fit(x)
        return cls.from_sklearn(bgmm)

    @classmethod
    def from_sklearn(cls, bgmm) -> MixtureDensity:  # noqa: ANN001 - sklearn estimator
        """Convert a fitted ``BayesianGaussianMixture(covariance_type="full")`` into torch parameters."""
        if getattr(bgmm, "covariance_type", None) != "full":
            raise ValueError(f"need covariance_type='full', got {getattr(bgmm, 'covariance_type', None)!r}")
        c = bgmm.means_.shape[1]
        prec_chol = np.asarray(bgmm.precisions_cholesky_, dtype=np.float64)  # [K, C, C]
        log_det = np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
        # The same constants as BayesianGaussianMixture._estimate_log_prob / _estimate_log_weights.
        dof = bgmm.degrees_of_freedom_
        log_lambda = c * np.log(2.0) + digamma(0.5 * (dof - np.arange(c)[:, None])).sum(axis=0)
        variational = -0.5 * c * np.log(dof) + 0.5 * (log_lambda - c / bgmm.mean_precision_)
        offsets = log_det + variational + bgmm._estimate_log_weights()
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
        return cls(as_t(bgmm.means_), as_t(prec_chol), as_t(offsets), as_t(bgmm.weights_), as_t(bgmm.covariances_))

    @property
    def num_channels(self) -> int:
        return int(self.means.shape[1])

    def _params(self) -> tuple[torch.Tensor, ...]:
        shifted_means = torch.einsum("kc,kcd->kd", self.means, self.precisions_cholesky)
        return self.precisions_cholesky, shifted_means, self.offsets

    def log_prob(self, features: torch.Tensor) -> torch.Tensor:
        """Mixture log-density of ``features [..., C]`` -> ``[...]`` (= sklearn's ``score_samples``)."""
        prec_chol, shifted_means, offsets = self._on(features.device, features.dtype)
        c = self.num_channels
        flat = features.reshape(-1, c)
        y = torch.einsum("mc,kcd->mkd", flat, prec_chol) - shifted_means  # [M, K, C]
        log_gauss = -0.5 * (c * math.log(2.0 * math.pi) + (y * y).sum(dim=-1))  # [M, K]
        return torch.logsumexp(log_gauss + offsets, dim=1).reshape(features.shape[:-1])


def density_state(density: GaussianDensity | MixtureDensity) -> dict[str, object]:
    """A fitted density as plain tensors and numbers (what a checkpoint stores; ``torch.load(weights_only=True)``
    reads it back): ``{"kind": "mgm" | "bgmm", ...parameters}``."""
    if isinstance(density, GaussianDensity):
        return {"kind": "mgm", "mean": density.mean, "covariance": density.covariance, "shrinkage": density.shrinkage}
    if isinstance(density, MixtureDensity):
        return {"kind": "bgmm", "means": density.means, "precisions_cholesky": density.precisions_cholesky,
                "offsets": density.offsets, "weights": density.weights, "covariances": density.covariances}
    raise TypeError(f"expected a GaussianDensity or MixtureDensity, got {type(density).__name__}")


def density_from_state(state: dict[str, object]) -> GaussianDensity | MixtureDensity:
    """The density :func:`density_state` describes (float64, on the CPU, as fitted)."""
    kind = state.get("kind")
    cpu = lambda t: torch.as_tensor(t).to("cpu", torch.float64)  # noqa: E731
    if kind == "mgm":
        return GaussianDensity(cpu(state["mean"]), cpu(state["covariance"]), float(state["shrinkage"]))
    if kind == "bgmm":
        return MixtureDensity(*(cpu(state[k]) for k in ("means", "precisions_cholesky", "offsets", "weights",
                                                         "covariances")))
    raise ValueError(f"unknown density kind {kind!r} in the stored state; expected 'mgm' or 'bgmm'")

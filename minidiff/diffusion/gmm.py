"""The analytic oracle: a Gaussian mixture, whose density, score and every noised version have closed forms.

p(x) = sum_k w_k N(x; mu_k, Sigma_k) in R^D. If x = s x0 + n eps with x0 ~ p and eps ~ N(0, I)
independent, then x is again a mixture, with the same weights, means s mu_k and covariances
C_k = s^2 Sigma_k + n^2 I. That one fact covers every forward path of the book:

    VP (discrete DDPM, t = 1..T):   s = sqrt(alpha_bar_t), n = sqrt(1 - alpha_bar_t)     (E3)
    VE / sigma samplers:            s = 1, n = sigma
    continuous SDEs:                s = the marginal mean coefficient, n = the marginal std (E29)
    flow matching:                  s = 1 - t, n = t                                      (E38)

So the optimal denoiser of every parameterization is known exactly, and a sampler driven by it must
reproduce p: the reference every sampler test can use in place of a trained network.

Two ways of computing, on purpose:
  * the mixture's own density, score and Hessian (`log_prob`, `score`, `score_jacobian`) use the
    Cholesky factors Sigma_k = L_k L_k^T, computed once; `noised(s, n)` builds the noised mixture as a
    new GaussianMixture, so its score comes the same way;
  * the posterior quantities (`posterior_mean` and the model callables) allow a different (s, n) for
    every example, which Cholesky factors per call would make slow. They use instead that C_k shares
    the eigenvectors of Sigma_k: with Sigma_k = U_k diag(lambda_k) U_k^T,
    C_k = U_k diag(s^2 lambda_k + n^2) U_k^T, one eigendecomposition per component for every (s, n).
Given (x, k), x0 and eps are jointly Gaussian with x, so by Gaussian conditioning
    E[x0 | x, k] = mu_k + s Sigma_k C_k^{-1} (x - s mu_k),   E[eps | x, k] = n C_k^{-1} (x - s mu_k),
and E[. | x] averages these with the responsibilities p(k | x) of the noised mixture. Tweedie's
formula E[x0 | x] = (x + n^2 grad log p_noised(x)) / s links the two ways; the tests check it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.parameterization import PREDICTION_TYPES
from minidiff.diffusion.schedules import NoiseSchedule

Model = Callable[[np.ndarray, Any], np.ndarray]

_LOG_2PI = math.log(2.0 * math.pi)
_WEIGHT_SUM_TOL = 1e-9  # weights given as decimals (0.5, 0.3, 0.2) sum to 1 within a few ulp
_SYMMETRY_RTOL = 1e-10  # relative to the largest entry: a covariance built as A A^T rounds to ~1e-16
_MIN_EIGENVALUE_RATIO = 1e-12  # condition numbers above 1e12 leave no accurate digit in Sigma^{-1} (x - mu)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)  # a private copy
    a.flags.writeable = False
    return a


def _einsum(spec: str, *operands: np.ndarray) -> np.ndarray:
    """np.einsum allowed to reorder the contraction and call BLAS (optimize=True): over (n, K, D) arrays
    that is ~20 times faster than its default loop, which matters for Langevin chains calling `score`."""
    return np.einsum(spec, *operands, optimize=True)


def _apply_per_component(matrices: np.ndarray, vectors: np.ndarray, *, transpose: bool = False) -> np.ndarray:
    """M_k v_nk for every point n and component k (M_k^T v_nk when `transpose`): matrices (K, D, D), vectors
    (n, K, D) -> (n, K, D). One batched matmul over k, (K, n, D) @ (K, D, D) with the vectors as rows: made on
    every score / denoiser call, it skips einsum's path search, which dominates small batches (a sampler's 64)."""
    right = matrices if transpose else matrices.transpose(0, 2, 1)  # (K, D, D): v^T M^T = (M v)^T, v^T M = (M^T v)^T
    return np.matmul(vectors.transpose(1, 0, 2), right).transpose(1, 0, 2)  # (K, n, D) -> (n, K, D)


def _mixture_average(r: np.ndarray, per_component: np.ndarray) -> np.ndarray:
    """sum_k r_nk v_nk: weights r (n, K), vectors (n, K, D) -> (n, D), in einsum's own loop (no path search)."""
    return np.einsum("nk,nki->ni", r, per_component)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log sum_k exp(a_k) over the last axis, shifted by the maximum so that nothing overflows."""
    top = a.max(axis=-1, keepdims=True)  # (n, 1)
    return (top + np.log(np.exp(a - top).sum(axis=-1, keepdims=True)))[..., 0]  # (n,)


def _softmax(a: np.ndarray) -> np.ndarray:
    return np.exp(a - _logsumexp(a)[..., None])


def _gaussian_log_terms(log_weights: np.ndarray, sq_mahalanobis: np.ndarray, log_det_2pi: np.ndarray) -> np.ndarray:
    """log w_k + log N(x; m_k, C_k) = log w_k - (|x - m_k|^2_{C_k^{-1}} + log det(2 pi C_k)) / 2."""
    return log_weights - 0.5 * (sq_mahalanobis + log_det_2pi)


def _real_array(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got a NaN or an infinity")
    return arr


def values_per_example(value: Any, name: str, n: int, low: float, high: float = math.inf) -> np.ndarray:
    """A number or an array of shape (n,) as float64 of shape (n,), every value in [low, high] (a noise level,
    a scale or a time per example; shared with minidiff.diffusion.score)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a number or an array of shape ({n},), got a bool")
    if not isinstance(value, (int, float, np.integer, np.floating, np.ndarray)):
        raise TypeError(f"{name}: expected a number or an array of shape ({n},), got {type(value).__name__}")
    arr = _real_array(value, name)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    elif arr.shape != (n,):
        raise ValueError(f"{name}: expected a number or an array of shape ({n},) (one per example), got {arr.shape}")
    if arr.size and (arr.min() < low or arr.max() > high):
        raise ValueError(f"{name}: expected values in [{low}, {high}], got {arr[(arr < low) | (arr > high)][0]}")
    return arr


class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, Sigma_k) in R^D, with every noised version in closed form.

    If x = s x0 + n eps (x0 ~ p, eps ~ N(0, I) independent), x is again a mixture with means s mu_k and
    covariances s^2 Sigma_k + n^2 I. That one fact covers every path:
      VP (discrete DDPM, t = 1..T):   s = sqrt(alpha_bar_t), n = sqrt(1 - alpha_bar_t)
      VE / sigma samplers:            s = 1, n = sigma
      continuous SDEs:                s = sde.marginal_mean_coef(t), n = sde.marginal_std(t)
      flow matching (E38):            s = 1 - t, n = t

    GaussianMixture(weights (K,), means (K, D), covariances (K, D, D)): the weights positive and summing
    to 1, every covariance symmetric positive definite. Attributes K, D and the three arrays (float64,
    read-only). Inputs x are float arrays of shape (n, D); results are float64 except the model
    callables, which return the dtype of their input.
    """

    def __init__(self, weights: Any, means: Any, covariances: Any) -> None:
        weights = _real_array(weights, "weights")
        if weights.ndim != 1 or weights.size < 1:
            raise ValueError(f"weights: expected shape (K,) with K >= 1, got {weights.shape}")
        if weights.min() <= 0.0:
            raise ValueError(f"weights: expected positive weights, got {weights.min()}")
        if abs(weights.sum() - 1.0) > _WEIGHT_SUM_TOL:
            raise ValueError(f"weights: expected weights summing to 1, got sum {weights.sum()!r}")
        K = weights.size
        means = _real_array(means, "means")
        if means.ndim != 2 or means.shape[0] != K or means.shape[1] < 1:
            raise ValueError(f"means: expected shape (K, D) = ({K}, D) with D >= 1, got {means.shape}")
        D = means.shape[1]
        covariances = _real_array(covariances, "covariances")
        if covariances.shape != (K, D, D):
            raise ValueError(f"covariances: expected shape (K, D, D) = ({K}, {D}, {D}), got {covariances.shape}")
        self.K, self.D = K, D
        self.weights = _frozen(weights / weights.sum())
        self.means = _frozen(means)
        self.covariances = _frozen(_symmetric(covariances))
        self._log_weights = np.log(self.weights)  # (K,)
        # The eigenbasis of each Sigma_k, shared by every noised covariance s^2 Sigma_k + n^2 I.
        self._eigvals, self._eigvecs = _eigh_positive_definite(self.covariances)  # (K, D), (K, D, D)
        self._chol = np.linalg.cholesky(self.covariances)  # (K, D, D), Sigma_k = L_k L_k^T
        self._chol_inv = np.linalg.inv(self._chol)  # (K, D, D), L_k^{-1}
        precisions = _einsum("kji,kjl->kil", self._chol_inv, self._chol_inv)  # (K, D, D), L^-T L^-1
        self._precisions = 0.5 * (precisions + precisions.transpose(0, 2, 1))  # exactly symmetric
        diag = np.diagonal(self._chol, axis1=1, axis2=2)  # (K, D)
        self._log_det_2pi = 2.0 * np.log(diag).sum(axis=1) + D * _LOG_2PI  # (K,), log det(2 pi Sigma_k)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, D={self.D}, weights={np.round(self.weights, 4).tolist()})"

    @classmethod
    def example_2d(cls) -> GaussianMixture:
        """A fixed asymmetric 2-D mixture: 3 components with weights 0.5, 0.3, 0.2, elongated and rotated
        covariances, data mostly inside [-2, 2]^2 (the scale of image data in [-1, 1])."""
        means = [[-0.9, -0.7], [1.0, 0.2], [-0.1, 1.2]]
        stds = [(0.45, 0.15), (0.35, 0.12), (0.2, 0.28)]  # along the rotated axes
        angles = [math.radians(30.0), math.radians(-55.0), math.radians(10.0)]
        covariances = []
        for (a, b), phi in zip(stds, angles, strict=True):
            rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
            covariances.append(rot @ np.diag([a * a, b * b]) @ rot.T)
        return cls([0.5, 0.3, 0.2], means, np.array(covariances))

    # --- samples --------------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator, n: int, *, return_labels: bool = False) -> Any:
        """n draws x = mu_k + L_k z with k ~ w and z ~ N(0, I): an array (n, D) [and the labels k, (n,) int64]."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), "
                            f"got {type(rng).__name__}")
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n: expected a number of samples >= 0, got {n!r}")
        labels = rng.choice(self.K, size=int(n), p=self.weights).astype(np.int64)  # (n,)
        z = rng.standard_normal((int(n), self.D))  # (n, D)
        x = self.means[labels] + _einsum("nij,nj->ni", self._chol[labels], z)  # (n, D)
        return (x, labels) if return_labels else x

    # --- the density and its derivatives (Cholesky factors) ----------------------------------------------

    def _check_x(self, x: Any, name: str = "x") -> np.ndarray:
        _v.float_array(x, name)
        if x.ndim != 2 or x.shape[1] != self.D:
            raise ValueError(f"{name}: expected shape (n, D) = (n, {self.D}), got {x.shape}")
        return x.astype(np.float64, copy=False)

    def _log_joint(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log w_k + log N(x; mu_k, Sigma_k), (n, K), and the whitened residuals z_k = L_k^{-1} (x - mu_k),
        (n, K, D)."""
        x = self._check_x(x)
        z = _apply_per_component(self._chol_inv, x[:, None, :] - self.means)  # (n, K, D)
        return _gaussian_log_terms(self._log_weights, (z * z).sum(axis=-1), self._log_det_2pi), z

    def log_prob(self, x: Any) -> np.ndarray:
        """log p(x) = log sum_k w_k N(x; mu_k, Sigma_k), shape (n,), by a shifted log-sum-exp over k."""
        return _logsumexp(self._log_joint(x)[0])

    def responsibilities(self, x: Any) -> np.ndarray:
        """r_k(x) = p(k | x) = w_k N(x; mu_k, Sigma_k) / p(x), shape (n, K)."""
        return _softmax(self._log_joint(x)[0])

    def _component_scores(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """(r, g): responsibilities (n, K) and g_k = -Sigma_k^{-1} (x - mu_k) = -L_k^{-T} z_k, (n, K, D)."""
        log_joint, z = self._log_joint(x)
        return _softmax(log_joint), -_apply_per_component(self._chol_inv, z, transpose=True)

    def score(self, x: Any) -> np.ndarray:
        """[E24] s(x) = grad_x log p(x) = sum_k r_k(x) (-Sigma_k^{-1} (x - mu_k)), r_k(x) = p(k | x)
        (Hyvarinen 2005), shape (n, D): each component's Gaussian score, weighted by its responsibility."""
        r, g = self._component_scores(x)
        return _mixture_average(r, g)  # (n, D)

    def score_jacobian(self, x: Any) -> np.ndarray:
        """The Hessian of log p, shape (n, D, D): sum_k r_k (g_k g_k^T - P_k) - g g^T with g_k = -P_k (x - mu_k),
        P_k = Sigma_k^{-1}, g = sum_k r_k g_k. Its trace is the exact divergence of the score."""
        r, g_k = self._component_scores(x)
        g = _mixture_average(r, g_k)  # (n, D)
        second = _einsum("nk,nki,nkj->nij", r, g_k, g_k) - _einsum("nk,kij->nij", r, self._precisions)
        return second - g[:, :, None] * g[:, None, :]  # (n, D, D)

    # --- noised versions -------------------------------------------------------------------------------

    def noised(self, scale: float, std: float) -> GaussianMixture:
        """The law of scale * x0 + std * eps: weights w_k, means scale mu_k, covariances scale^2 Sigma_k + std^2 I."""
        scale, std = _v.finite(scale, "scale"), _v.finite(std, "std")
        if std < 0.0:
            raise ValueError(f"std: expected a standard deviation >= 0, got {std}")
        if scale == 0.0 and std == 0.0:
            raise ValueError("scale, std: both 0 give a point mass at 0, which has no density")
        covariances = scale**2 * self.covariances + std**2 * np.eye(self.D)  # (K, D, D)
        return GaussianMixture(self.weights, scale * self.means, covariances)

    def _posterior_means(self, x: np.ndarray, scale: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(E[x0 | x], E[eps | x]) for x = s x0 + n eps, one (s, n) per example: each (n, D), float64.

        In the eigenbasis of Sigma_k (Sigma_k = U_k diag(lambda_k) U_k^T), C_k = s^2 Sigma_k + n^2 I is
        diag(d_k) with d_k = s^2 lambda_k + n^2, so u_k = C_k^{-1} (x - s mu_k) = U_k (y_k / d_k) with
        y_k = U_k^T (x - s mu_k); then E[x0 | x, k] = mu_k + s U_k (lambda_k y_k / d_k) and
        E[eps | x, k] = n U_k (y_k / d_k), averaged with the noised responsibilities.
        """
        s, n = scale[:, None, None], std[:, None, None]  # (n, 1, 1)
        y = _apply_per_component(self._eigvecs, x[:, None, :] - s * self.means, transpose=True)  # (n, K, D)
        d = s * s * self._eigvals + n * n  # (n, K, D)
        if np.any(d <= 0.0):
            raise ValueError("scale, std: both 0 for an example; x = 0 then says nothing about x0")
        log_det_2pi = np.log(d).sum(axis=-1) + self.D * _LOG_2PI  # (n, K)
        log_joint = _gaussian_log_terms(self._log_weights, (y * y / d).sum(axis=-1), log_det_2pi)  # (n, K)
        r = _softmax(log_joint)  # (n, K), p(k | x) under the noised mixture
        u = y / d  # (n, K, D), C_k^{-1} (x - s mu_k) in the eigenbasis
        x0_k = self.means + s * _apply_per_component(self._eigvecs, self._eigvals * u)  # (n, K, D)
        eps_k = n * _apply_per_component(self._eigvecs, u)  # (n, K, D)
        return _mixture_average(r, x0_k), _mixture_average(r, eps_k)

    def _posterior(self, x: Any, scale: Any, std: Any, scale_name: str = "scale",
                   std_name: str = "std") -> tuple[np.ndarray, np.ndarray]:
        x = self._check_x(x)
        scale = values_per_example(scale, scale_name, x.shape[0], low=-math.inf)
        std = values_per_example(std, std_name, x.shape[0], low=0.0)
        return self._posterior_means(x, scale, std)

    def posterior_mean(self, x: Any, scale: Any, std: Any) -> np.ndarray:
        """E[x0 | scale x0 + std eps = x], shape (n, D); scale and std numbers or arrays of shape (n,).

        = sum_k p(k | x) (mu_k + s Sigma_k C_k^{-1} (x - s mu_k)), C_k = s^2 Sigma_k + n^2 I: Gaussian
        conditioning within each component, weighted by the noised mixture's responsibilities.
        """
        return self._posterior(x, scale, std)[0]

    def denoiser(self, x: Any, sigma: Any) -> np.ndarray:
        """D(x, sigma) = E[x0 | x0 + sigma eps = x], shape (n, D): the ideal denoiser of the VE / EDM path
        (sigma >= 0, a number or one per example)."""
        return self._posterior(x, 1.0, sigma, std_name="sigma")[0]

    def velocity(self, x: Any, t: Any) -> np.ndarray:
        """Flow matching (E38): E[eps - x0 | (1 - t) x0 + t eps = x], shape (n, D), t in [0, 1] (a number or
        one per example). Computed as E[eps | x] - E[x0 | x], which is defined at t = 0 and t = 1 too."""
        x = self._check_x(x)
        t = values_per_example(t, "t", x.shape[0], low=0.0, high=1.0)
        x0, eps = self._posterior_means(x, 1.0 - t, t)
        return eps - x0

    # --- models for a discrete VP schedule --------------------------------------------------------------

    def _vp_coefficients(self, schedule: NoiseSchedule, t: Any, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)), each (batch,). Integer t in 1..T indexes the
        schedule; float t in [0, T] interpolates sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) linearly
        over t = 0..T (as diffusers' sigma samplers do), then alpha_bar = 1 / (1 + sigma^2)."""
        is_float = isinstance(t, (float, np.floating)) or (isinstance(t, np.ndarray) and t.dtype.kind == "f")
        if not is_float:
            t = schedule.check_t(t)
            t = np.broadcast_to(t, (batch,)) if t.ndim == 0 else t
            if t.shape != (batch,):
                raise ValueError(f"t: expected one timestep per example, shape ({batch},), got {t.shape}")
            return schedule.sqrt_alpha_bars[t], schedule.sqrt_one_minus_alpha_bars[t]
        t = values_per_example(t, "t", batch, low=0.0, high=float(schedule.T))
        with np.errstate(divide="ignore"):  # alpha_bar_T = 0 after zero-terminal-SNR rescaling: sigma_T = inf
            table = np.sqrt(schedule.one_minus_alpha_bars / schedule.alpha_bars)  # (T + 1,)
        with np.errstate(invalid="ignore"):
            sigma = np.interp(t, np.arange(schedule.T + 1), table)  # (batch,)
            one_minus = np.where(np.isinf(sigma), 1.0, sigma * sigma / (1.0 + sigma * sigma))
        return np.sqrt(1.0 / (1.0 + sigma * sigma)), np.sqrt(one_minus)

    def _vp_model(self, schedule: NoiseSchedule, combine: Callable[..., np.ndarray]) -> Model:
        """model(x, t) = combine(E[x0 | x_t = x], E[eps | x_t = x], s, n) for x of shape (B, ...) with
        prod(...) = D, returned in the dtype and shape of x."""
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule: expected a NoiseSchedule, got {type(schedule).__name__}")

        def model(x: np.ndarray, t: Any) -> np.ndarray:
            _v.float_array(x, "x")
            if x.ndim < 2 or math.prod(x.shape[1:]) != self.D:
                raise ValueError(f"x: expected shape (B, D) = (B, {self.D}) or (B, ...) with {self.D} values per "
                                 f"example, got {x.shape}")
            flat = x.reshape(x.shape[0], self.D).astype(np.float64)  # (B, D)
            s, n = self._vp_coefficients(schedule, t, flat.shape[0])  # (B,), (B,)
            x0, eps = self._posterior_means(flat, s, n)  # (B, D) each
            return combine(x0, eps, s[:, None], n[:, None]).reshape(x.shape).astype(x.dtype)

        return model

    def eps_model(self, schedule: NoiseSchedule) -> Model:
        """model(x, t) = E[eps | x_t = x] under x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (E3):
        the minimizer of E15, the optimal noise predictor."""
        return self._vp_model(schedule, lambda x0, eps, s, n: eps)

    def x0_model(self, schedule: NoiseSchedule) -> Model:
        """model(x, t) = E[x0 | x_t = x], the optimal data predictor ("sample" in diffusers)."""
        return self._vp_model(schedule, lambda x0, eps, s, n: x0)

    def v_model(self, schedule: NoiseSchedule) -> Model:
        """model(x, t) = E[v | x_t = x] = sqrt(alpha_bar_t) E[eps | x] - sqrt(1 - alpha_bar_t) E[x0 | x] (E14)."""
        return self._vp_model(schedule, lambda x0, eps, s, n: s * eps - n * x0)

    def model(self, schedule: NoiseSchedule, prediction_type: str) -> Model:
        """The optimal model for diffusers' prediction_type: "epsilon", "sample" or "v_prediction"."""
        makers = {"epsilon": self.eps_model, "sample": self.x0_model, "v_prediction": self.v_model}
        return makers[_v.choice(prediction_type, "prediction_type", PREDICTION_TYPES)](schedule)


def _symmetric(covariances: np.ndarray) -> np.ndarray:
    """The covariances, checked symmetric to rounding and then made exactly symmetric."""
    asym = np.abs(covariances - covariances.transpose(0, 2, 1)).max(axis=(1, 2))  # (K,)
    size = np.abs(covariances).max(axis=(1, 2))  # (K,)
    bad = np.flatnonzero(asym > _SYMMETRY_RTOL * size)
    if bad.size:
        raise ValueError(f"covariances: expected symmetric matrices, covariances[{bad[0]}] is not "
                         f"(max |S - S^T| = {asym[bad[0]]:.3g})")
    return 0.5 * (covariances + covariances.transpose(0, 2, 1))


def _eigh_positive_definite(covariances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (K, D) and eigenvectors (K, D, D) of each covariance; ValueError naming the first one
    that is not positive definite (relative to its largest eigenvalue, so that Cholesky cannot fail)."""
    eigvals, eigvecs = np.linalg.eigh(covariances)  # ascending eigenvalues
    bad = np.flatnonzero(~(eigvals[:, 0] > _MIN_EIGENVALUE_RATIO * eigvals[:, -1]))
    if bad.size:
        k = bad[0]
        raise ValueError(f"covariances: expected positive definite matrices, covariances[{k}] has eigenvalues "
                         f"{eigvals[k].tolist()}")
    return eigvals, eigvecs

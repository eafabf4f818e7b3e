"""The exact-data oracle: Gaussian data x0 ~ N(mu, s^2), independently per dimension.

Then (x_0, x_1, ..., x_T) under the forward chain is jointly Gaussian, and every distribution the
theory talks about has a closed form, derived here from Gaussian conditioning alone (never from
minidiff's formulas; the alpha_bars are re-derived from the betas by a running product):

  marginal      q(x_t) = N(m_t, V_t),  m_t = sqrt(alpha_bar_t) mu,  V_t = alpha_bar_t s^2 + 1 - alpha_bar_t
  reverse step  q(x_{t-1} | x_t) = N(m_{t-1} + K_t (x_t - sqrt(alpha_t) m_{t-1}), V_{t-1} - K_t sqrt(alpha_t) V_{t-1}),
                K_t = Cov(x_{t-1}, x_t) / Var(x_t) = sqrt(alpha_t) V_{t-1} / V_t
                (since x_t = sqrt(alpha_t) x_{t-1} + independent noise)
  denoisers     E[eps | x_t] = sqrt(1 - alpha_bar_t) / V_t (x_t - m_t)       (Cov(eps, x_t) = sqrt(1 - alpha_bar_t))
                E[x0 | x_t] = mu + sqrt(alpha_bar_t) s^2 / V_t (x_t - m_t)   (Cov(x0, x_t) = sqrt(alpha_bar_t) s^2)
                E[v | x_t] = sqrt(alpha_bar_t) E[eps | x_t] - sqrt(1 - alpha_bar_t) E[x0 | x_t]
  minimum of E15 at t: E Var(eps | x_t) = 1 - (1 - alpha_bar_t) / V_t = alpha_bar_t s^2 / V_t per dimension.

A reverse process with prior q(x_T), steps q(x_{t-1} | x_t) and decoder q(x_0 | x_1) is the forward
joint read backwards: its ELBO equals log q(x_0) for every x_0, and along every trajectory.
"""

from __future__ import annotations

import numpy as np


class GaussianData:
    def __init__(self, betas: np.ndarray, mu, s) -> None:
        """betas: beta_1..beta_T; mu, s: the data mean and standard deviation per dimension (shape (D,) or scalars)."""
        self.T = len(betas)
        self.betas = np.concatenate(([0.0], np.asarray(betas, np.float64)))  # index t
        self.alphas = 1.0 - self.betas
        self.alpha_bars = np.cumprod(self.alphas)  # alpha_bar_0 = 1 (alphas[0] = 1)
        self.mu, self.s = np.asarray(mu, np.float64), np.asarray(s, np.float64)

    # --- the forward marginals -------------------------------------------------------------------

    def m(self, t):
        return np.sqrt(self.alpha_bars[t]) * self.mu

    def V(self, t):
        ab = self.alpha_bars[t]
        return ab * self.s**2 + 1.0 - ab

    def sample(self, rng, batch: int) -> np.ndarray:
        return self.mu + self.s * rng.standard_normal((batch, *np.shape(self.mu)))

    def log_prob(self, x0: np.ndarray) -> np.ndarray:
        """log q(x0) per example (summed over dimensions)."""
        z = (x0 - self.mu) / self.s
        return (-0.5 * z**2 - np.log(self.s) - 0.5 * np.log(2 * np.pi)).reshape(len(x0), -1).sum(axis=1)

    def entropy(self) -> float:
        """H(q(x0)) in nats, summed over dimensions: E[-log q(x0)]."""
        return float(np.sum(np.broadcast_to(0.5 * np.log(2 * np.pi * np.e * self.s**2), np.shape(self.mu))))

    def prior(self):
        """q(x_T) as a (mean, variance) pair."""
        return self.m(self.T), self.V(self.T)

    # --- the true reverse process ---------------------------------------------------------------

    def gain(self, t: int):
        """K_t of E[x_{t-1} | x_t] = m_{t-1} + K_t (x_t - sqrt(alpha_t) m_{t-1})."""
        return np.sqrt(self.alphas[t]) * self.V(t - 1) / self.V(t)

    def reverse_mean_coefs(self, t: int):
        """(A_t, c_t) with E[x_{t-1} | x_t] = A_t x_t + c_t."""
        k = self.gain(t)
        return k, self.m(t - 1) * (1.0 - k * np.sqrt(self.alphas[t]))

    def reverse_variance(self, t: int):
        return self.V(t - 1) - self.gain(t) * np.sqrt(self.alphas[t]) * self.V(t - 1)

    def reverse_variance_table(self) -> np.ndarray:
        """sigma_t^2 = Var(x_{t-1} | x_t) for t = 0..T (index 0 unused: 1.0), for scalar s."""
        table = np.ones(self.T + 1)
        for t in range(1, self.T + 1):
            table[t] = float(self.reverse_variance(t))
        return table

    # --- the optimal models, callables model(xt, t) --------------------------------------------

    def _at(self, values, t, xt):
        t = np.asarray(t)
        return values[t].reshape(t.shape + (1,) * (xt.ndim - t.ndim)) if t.ndim else values[t]

    def eps_model(self, xt, t):
        ab = self._at(self.alpha_bars, t, xt)
        return np.sqrt(1.0 - ab) / (ab * self.s**2 + 1.0 - ab) * (xt - np.sqrt(ab) * self.mu)

    def x0_model(self, xt, t):
        ab = self._at(self.alpha_bars, t, xt)
        return self.mu + np.sqrt(ab) * self.s**2 / (ab * self.s**2 + 1.0 - ab) * (xt - np.sqrt(ab) * self.mu)

    def v_model(self, xt, t):
        ab = self._at(self.alpha_bars, t, xt)
        return np.sqrt(ab) * self.eps_model(xt, t) - np.sqrt(1.0 - ab) * self.x0_model(xt, t)

    def model(self, prediction_type: str):
        return {"epsilon": self.eps_model, "sample": self.x0_model, "v_prediction": self.v_model}[prediction_type]

    def loss_minimum(self, t):
        """min over predictors of E || eps - eps_hat(x_t) ||^2 per dimension at step t (E15's minimum)."""
        ab = self.alpha_bars[t]
        return ab * self.s**2 / self.V(t)

"""The fitted part of the brain-MRI check: a logistic regression and a novelty penalty, in numpy.

:class:`LogisticScorer` holds the standardisation and logistic regression fitted by
``benchmarks/mri_check.py``; :class:`Novelty` the one-class distance from the brain MRI
slices of the fit. :class:`~tumor_classifier.mri_check.MRICheck` combines them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow warning for large |z|.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass
class LogisticScorer:
    """A fitted standardisation + binary logistic regression, scored in numpy.

    ``score(X) = sigmoid(((X - mean) / scale) @ coef + intercept)``: scikit-learn's
    ``StandardScaler`` then ``LogisticRegression().predict_proba(X)[:, 1]``.

    Attributes:
        mean: float64 array (d,).
        scale: float64 array (d,), positive.
        coef: float64 array (d,).
        intercept: The bias.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def from_sklearn(cls, scaler: Any, logistic: Any) -> "LogisticScorer":
        """Copies a fitted ``StandardScaler`` and binary ``LogisticRegression``.

        The probability returned by :meth:`score` is that of ``logistic.classes_[1]``.
        """
        if np.asarray(logistic.coef_).shape[0] != 1:
            raise ValueError(f"A binary logistic regression is needed; got {len(logistic.classes_)} classes.")
        mean = np.zeros(scaler.n_features_in_) if scaler.mean_ is None else scaler.mean_
        scale = np.ones(scaler.n_features_in_) if scaler.scale_ is None else scaler.scale_
        return cls(
            np.asarray(mean, dtype=np.float64),
            np.asarray(scale, dtype=np.float64),
            np.asarray(logistic.coef_[0], dtype=np.float64),
            float(np.asarray(logistic.intercept_).ravel()[0]),
        )

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """float64 array (n,): the log-odds of the positive class."""
        return ((np.asarray(X, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept

    def score(self, X: np.ndarray) -> np.ndarray:
        """float64 array (n,) in [0, 1]: the positive class's probability."""
        return sigmoid(self.decision_function(X))

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """float64 array (n, d): each feature's share of the log-odds (the intercept aside)."""
        return (np.asarray(X, dtype=np.float64) - self.mean) / self.scale * self.coef


@dataclass
class Novelty:
    """How unlike the fitted brain MRI slices an image looks, and the penalty beyond a limit.

    A one-class measure beside the two-class logistic regression, for kinds of image the
    regression never saw (its fit only separates the non-MRI kinds it was shown). On the
    square roots of the pooled backbone features (which tames their skew), the distance
    is the log of the squared residual outside the ``k`` leading principal directions of
    the brain MRI slices of the fit::

        distance(x) = log || (I - V^T V) (sqrt(x) - mean) ||^2

    Images farther than ``limit`` (set on validation brain MRI) lose
    ``weight * (distance - limit)`` log-odds.

    Attributes:
        mean: float64 array (1280,): mean of the square-rooted features of brain MRI.
        components: float64 array (k, 1280), orthonormal rows: the principal directions.
        limit: Distance up to which nothing is subtracted.
        weight: Log-odds subtracted per unit of distance beyond ``limit``.
    """

    mean: np.ndarray
    components: np.ndarray
    limit: float = math.inf
    weight: float = 0.0

    @classmethod
    def fit(cls, backbone: np.ndarray, k: int) -> "Novelty":
        """The subspace of the ``k`` leading directions of brain MRI features (n, 1280); no limit yet."""
        roots = np.sqrt(np.maximum(np.asarray(backbone, dtype=np.float64), 0.0))
        mean = roots.mean(axis=0)
        _, _, vt = np.linalg.svd(roots - mean, full_matrices=False)
        return cls(mean, vt[:k].copy())

    def distance(self, backbone: np.ndarray) -> np.ndarray:
        """float64 array (n,): the distance of each row of backbone features (n, 1280)."""
        centred = np.sqrt(np.maximum(np.asarray(backbone, dtype=np.float64), 0.0)) - self.mean
        inside = centred @ self.components.T
        residual = np.einsum("ij,ij->i", centred, centred) - np.einsum("ij,ij->i", inside, inside)
        return np.log(np.maximum(residual, 1e-12))

    def penalty(self, backbone: np.ndarray) -> np.ndarray:
        """float64 array (n,) >= 0: the log-odds to subtract."""
        return self.weight * np.maximum(self.distance(backbone) - self.limit, 0.0)

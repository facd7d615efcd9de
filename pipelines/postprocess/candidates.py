"""One post-processing choice (map, smoothing, mask, image score) and its image scores on one split, cached."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.postprocess.scoring import ScoreName, score_images, smooth_maps
from pipelines.postprocess.settings import SplitMaps


@dataclass(frozen=True)
class Candidate:
    """A map name, a smoothing sigma in pixels, whether to score inside the head mask, and an image score.

    ``percentile`` is set only for the ``percentile`` score and ``top_k_percent`` only for ``top_k``.
    """

    map_name: str
    sigma: float
    head_mask: bool
    score: ScoreName
    percentile: float | None = None
    top_k_percent: float | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Candidate:
        """Build a candidate from the parameters of an Optuna trial, as :meth:`params` names them."""
        return cls(
            map_name=params["map"],
            sigma=float(params["sigma"]),
            head_mask=bool(params["head_mask"]),
            score=params["score"],
            percentile=params.get("percentile"),
            top_k_percent=params.get("top_k_percent"),
        )

    def params(self) -> dict[str, Any]:
        """Return the parameters under their Optuna names, leaving out the unset ones."""
        params: dict[str, Any] = {"map": self.map_name, "sigma": self.sigma, "head_mask": self.head_mask, "score": self.score}
        if self.percentile is not None:
            params["percentile"] = self.percentile
        if self.top_k_percent is not None:
            params["top_k_percent"] = self.top_k_percent
        return params


class CandidateScorer:
    """Compute the image scores of candidates on one split, caching smoothed maps per (map, sigma) and scores per candidate."""

    def __init__(self, split: SplitMaps) -> None:
        self._split = split
        self._smoothed: dict[tuple[str, float], np.ndarray] = {}
        self._scores: dict[Candidate, np.ndarray] = {}

    def scores(self, candidate: Candidate) -> np.ndarray:
        """Return the image scores of ``candidate`` as a read-only array of shape ``(N,)``."""
        cached = self._scores.get(candidate)
        if cached is not None:
            return cached

        key = (candidate.map_name, candidate.sigma)
        if key not in self._smoothed:
            self._smoothed[key] = smooth_maps(self._split.maps[candidate.map_name], candidate.sigma)

        masks = self._split.head_masks if candidate.head_mask else None
        scores = score_images(
            self._smoothed[key], masks, candidate.score, percentile=candidate.percentile, top_k_percent=candidate.top_k_percent
        )
        scores.flags.writeable = False
        self._scores[candidate] = scores
        return scores

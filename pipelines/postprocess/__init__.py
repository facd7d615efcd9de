"""Post-processing search: choose the anomaly map, smoothing, mask, image score and threshold of a cell.

- ``scoring``: Gaussian smoothing of maps and image scores (mean, max, percentile, top k %).
- ``thresholds``: a decision threshold fitted by F1 or Youden's J, and confusion counts at it.
- ``settings``: the search space and the per-split inputs, checked up front.
- ``candidates``: one post-processing choice and its cached image scores on a split.
- ``storage``: the Optuna journal file or RDB that keeps a study across restarts.
- ``study``: the seeded, resumable TPE search on validation, reported on test.
- ``result``: what a search returns, with a JSON-ready form.
"""

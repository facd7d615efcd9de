"""Reconstruction, perceptual and detection metrics, and the anomaly maps and scores built from them.

- ``image``: MAE and SSIM between an image batch and its reconstruction.
- ``lpips`` and ``lpips_weights``: LPIPS distances and maps from local AlexNet weights.
- ``maps``: anomaly maps and per-image anomaly scores inside a mask.
- ``detection``: AUPRC and AUROC of anomaly scores against image labels.
"""

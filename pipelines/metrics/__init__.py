"""Reconstruction, perceptual and detection metrics, and the anomaly maps and scores built from them.

- ``image``: MAE and SSIM between an image batch and its reconstruction.
- ``lpips`` and ``lpips_weights``: LPIPS distances and maps from local AlexNet weights.
- ``maps``: anomaly maps and per-image anomaly scores inside a mask.
- ``detection``: AUPRC and AUROC of anomaly scores against image labels.

Value contract of the image metrics. Inputs are floating-point ``(B, C, H, W)`` batches with
values in [0, 1], the range that preprocessing produces and to which reconstructions are
clamped. Each metric returns one value per image, shape ``(B,)``:

- MAE, the mean absolute error over channels and pixels, lies in [0, 1]. An image compared
  with itself gives exactly 0.
- SSIM uses an 11×11 Gaussian window with sigma 1.5 and ``data_range=1.0``, the width of
  [0, 1], and averages the local SSIM where the window fits inside the image. It lies in
  [-1, 1], and an image compared with itself gives 1 up to float32 rounding (1e-6).
- LPIPS (AlexNet, v0.1) is 0 or more. Between different 64×64 ultrasound frames it measured
  0.27 to 0.35 (tests/reference/lpips_reference.json). An image compared with itself gives 0
  up to float32 rounding (1e-6). It rejects values outside [0, 1] and images smaller than
  31×31 pixels.

tests/test_metrics_image.py checks the self-comparison values on real ultrasound images.
"""

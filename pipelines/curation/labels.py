"""SonoNet's output classes, kept free of PyTorch so the spec can check plane names quickly."""

SONONET_LABELS: tuple[str, ...] = (
    "3VV",
    "4CH",
    "Abdominal",
    "Background",
    "Brain (Cb.)",
    "Brain (Tv.)",
    "Femur",
    "Kidneys",
    "Lips",
    "LVOT",
    "Profile",
    "RVOT",
    "Spine (cor.)",
    "Spine (sag.)",
)
"""Names of the 14 SonoNet outputs, in output order."""

SONONET_VARIANTS: tuple[int, ...] = (16, 32, 64)
"""Width of the first convolution of each published SonoNet. Every later width scales with it."""

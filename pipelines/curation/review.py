"""A static HTML contact sheet for the manual review of curated images.

Each card shows the original frame with the head-mask outline, the final crop, the
standard plane with its confidence, the gestational age and the decision with its
reason. Thumbnails are PNG files next to ``index.html``, so the page opens from disk
in any browser, with no server. Rejections go into an exclude list, which later
runs honour.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

# Crops are shown at this height; originals come at their thumbnail size, up to this height.
THUMBNAIL_HEIGHT = 160
OUTLINE_RGB = (255, 64, 64)
# Names of the thumbnails this module writes; only these are removed when a folder is reused.
_THUMBNAIL_NAME = re.compile(r"\d{5}-(?:original|crop)\.png")


@dataclass(frozen=True)
class ReviewItem:
    """The contents of one review card. Optional fields are None when a stage did not run.

    ``original`` is None when the image could not be decoded; the card then shows the reason.
    """

    id: str
    original: np.ndarray | None
    mask: np.ndarray | None
    crop: np.ndarray | None
    plane: str | None
    plane_confidence: float | None
    ga_weeks: float | None
    split: str
    reason: str


def write_review_page(items: list[ReviewItem], folder: Path, *, title: str, stage_counts: list[dict[str, object]] | None = None) -> Path:
    """Write ``folder/index.html`` and its thumbnails; return the page's path.

    Thumbnails that an earlier page wrote into ``folder/thumbnails`` are removed first,
    and other files there are left alone.
    """
    thumbnails = folder / "thumbnails"
    thumbnails.mkdir(parents=True, exist_ok=True)
    for path in thumbnails.iterdir():
        if _THUMBNAIL_NAME.fullmatch(path.name) and path.is_file():
            path.unlink()
    cards = []
    for number, item in enumerate(items):
        original_name = None
        if item.original is not None:
            original_name = f"{number:05d}-original.png"
            Image.fromarray(_outlined(item.original, item.mask)).save(thumbnails / original_name)
        crop_name = None
        if item.crop is not None:
            crop_name = f"{number:05d}-crop.png"
            _save_png(_grey_rgb(item.crop), thumbnails / crop_name)
        cards.append(_card(item, original_name, crop_name))

    decisions = Counter("kept" if not item.reason else "dropped" for item in items)
    page = _PAGE.format(
        title=html.escape(title),
        total=len(items),
        kept=decisions["kept"],
        dropped=decisions["dropped"],
        stages=_stage_table(stage_counts or []),
        cards="\n".join(cards),
    )
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _card(item: ReviewItem, original_name: str | None, crop_name: str | None) -> str:
    plane = "plane: not classified"
    if item.plane is not None:
        plane = f"plane: {html.escape(item.plane)} ({item.plane_confidence:.2f})"
    ga = "GA: unknown" if item.ga_weeks is None else f"GA: {_weeks_days(item.ga_weeks)}"
    decision = f"kept ({html.escape(item.split)})" if not item.reason else f"dropped: {html.escape(item.reason)}"
    original = (
        f'<img src="thumbnails/{original_name}" alt="original">'
        if original_name
        else f'<div class="none">no image: {html.escape(item.reason or "not decoded")}</div>'
    )
    crop = f'<img src="thumbnails/{crop_name}" alt="crop">' if crop_name else '<div class="none">no crop</div>'
    state = "kept" if not item.reason else "dropped"
    return (
        f'<figure class="card {state}" data-id="{html.escape(item.id)}">'
        f'<div class="pair">{original}{crop}</div>'
        f"<figcaption><code>{html.escape(item.id)}</code><br>{plane}<br>{ga}<br>"
        f'<span class="decision">{decision}</span></figcaption></figure>'
    )


def _stage_table(stage_counts: list[dict[str, object]]) -> str:
    if not stage_counts:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(str(row['stage']))}</td><td>{row['in']}</td><td>{row['kept']}</td>"
        f"<td>{html.escape(str(row.get('dropped', '')))}</td><td>{html.escape(str(row.get('notes', '')))}</td></tr>"
        for row in stage_counts
    )
    return f"<table><tr><th>stage</th><th>in</th><th>kept</th><th>dropped by reason</th><th>notes</th></tr>{rows}</table>"


def _weeks_days(weeks: float) -> str:
    whole = int(weeks)
    days = int(round((weeks - whole) * 7))
    if days == 7:
        whole, days = whole + 1, 0
    return f"{whole}+{days}"


def _grey_rgb(image: np.ndarray) -> np.ndarray:
    grey = np.clip(image, 0.0, 1.0)
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _outlined(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    rgb = _grey_rgb(image)
    if mask is not None and mask.any():
        rgb[find_boundaries(mask, mode="inner")] = OUTLINE_RGB
    return rgb


def _save_png(rgb: np.ndarray, path: Path) -> None:
    height, width = rgb.shape[:2]
    thumbnail = Image.fromarray(rgb).resize(
        (max(1, round(width * THUMBNAIL_HEIGHT / height)), THUMBNAIL_HEIGHT), Image.Resampling.BILINEAR
    )
    thumbnail.save(path)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.sheet {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.card {{ margin: 0; padding: 4px; border: 2px solid #8c8; font-size: 11px; width: fit-content; max-width: 500px; }}
.card.dropped {{ border-color: #d88; }}
.pair {{ display: flex; gap: 4px; align-items: flex-start; }}
.pair img {{ max-height: 160px; max-width: 320px; }}
.none {{ width: 160px; height: 160px; background: #eee; color: #666; overflow: hidden; }}
code {{ word-break: break-all; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>{total} images: {kept} kept, {dropped} dropped.
<span id="image-check">Checking thumbnails...</span>
Show: <button onclick="show('card')">all</button> <button onclick="show('kept')">kept</button>
<button onclick="show('dropped')">dropped</button></p>
<p>To exclude an image from later runs, add its id to the spec's exclude list with a comment:
<code>ID  # reason</code>.</p>
{stages}
<div class="sheet">
{cards}
</div>
<script>
function show(kind) {{
  for (const card of document.querySelectorAll('.card')) {{
    card.style.display = card.classList.contains(kind) ? '' : 'none';
  }}
}}
window.addEventListener('load', () => {{
  const images = [...document.querySelectorAll('.card img')];
  const loaded = images.filter(image => image.complete && image.naturalWidth > 0).length;
  const check = document.getElementById('image-check');
  check.textContent = loaded + ' of ' + images.length + ' thumbnails loaded.';
  check.dataset.loaded = loaded;
  check.dataset.total = images.length;
}});
</script>
</body>
</html>
"""

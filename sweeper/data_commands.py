"""``sweeper data``: run the curation stages alone, review their decisions, train the head segmenter."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from sweeper.errors import user_errors


@click.group("data")
def data_group() -> None:
    """Curate data: prepare the cached arrays, review the decisions, train the head segmenter."""


def _spec_options(function: Any) -> Any:
    function = click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), help="Folder that relative data paths resolve against.")(function)
    function = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec value (repeatable).")(function)
    return click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))(function)


def _prepare(spec_path: Path, overrides: tuple[str, ...], data_root: Path | None, *, keep_thumbnails: bool) -> tuple[Any, Any]:
    """Load the spec and curate its data with a progress bar; return (spec, prepared data)."""
    from sweeper.data_setup import prepare_data
    from sweeper.launch import LaunchOptions, check_sources, check_writable, load_spec, resolve_data_root
    from sweeper.paths import default_cache_dir

    options = LaunchOptions(spec_path, list(overrides), data_root)
    _, spec = load_spec(options)
    root = resolve_data_root(options, spec)
    check_sources(spec, root)
    cache_dir = Path(spec.data.cache_dir).expanduser() if spec.data.cache_dir else default_cache_dir()
    check_writable(cache_dir, "data.cache_dir")

    bar: Any = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label="Curating images", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        data = prepare_data(
            spec, spec_path=spec_path, data_root=root, cache_dir=cache_dir, keep_thumbnails=keep_thumbnails, on_progress=on_progress
        )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    return spec, data


@data_group.command()
@_spec_options
def prepare(spec: Path, overrides: tuple[str, ...], data_root: Path | None) -> None:
    """Run the curation stages of SPEC alone and print what each stage kept and dropped.

    The result is cached under a key of the inputs, settings and weights. A second run
    with the same inputs reads it back and prints how much faster that was.
    """
    with user_errors():
        _, data = _prepare(spec, overrides, data_root, keep_thumbnails=False)
    _print_stage_counts(data)


def _print_stage_counts(data: Any) -> None:
    click.echo("Stage             in   kept  dropped by reason")
    for row in data.stage_counts:
        notes = f" ({row['notes']})" if row.get("notes") else ""
        click.echo(f"{row['stage']:<16} {row['in']:>4}  {row['kept']:>5}  {row['dropped']}{notes}")
    click.echo("")
    for split, counts in data.counts().items():
        click.echo(f"{split:<6} {counts['healthy']:>5} healthy  {counts['pathological']:>5} pathological")
    if data.cache_hit:
        ratio = data.first_seconds / max(data.seconds, 1e-6)
        click.echo(
            f"Cache hit {data.cache_key[:12]}: {data.seconds:.2f} s, against {data.first_seconds:.2f} s for the first "
            f"preparation ({ratio:.0f}x faster)"
        )
    else:
        click.echo(f"Prepared in {data.seconds:.2f} s and cached as {data.cache_key[:12]}")


@data_group.command()
@_spec_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("review"), show_default=True, help="Folder for the contact sheet.")
def review(spec: Path, overrides: tuple[str, ...], data_root: Path | None, out: Path) -> None:
    """Write a static HTML contact sheet of every image of SPEC and its curation decision.

    Each card shows the original with the head-mask outline, the final crop, the plane
    label and confidence, the gestational age and the decision. Rejected images go into
    the exclude list named by data.curation.exclude_list, one id and comment per line.
    """
    from pipelines.curation.review import ReviewItem, write_review_page

    with user_errors():
        spec_model, data = _prepare(spec, overrides, data_root, keep_thumbnails=True)
    items = []
    for record in sorted(data.records, key=lambda r: r.id):
        thumbnail, mask = data.thumbnails.get(record.id, (None, None))
        if thumbnail is None:
            thumbnail = _placeholder()
        items.append(
            ReviewItem(
                id=record.id,
                original=thumbnail.astype("float32") / 255.0,
                mask=mask,
                crop=data.crops.get(record.id) if data.crops else None,
                plane=record.plane or None,
                plane_confidence=record.plane_confidence,
                ga_weeks=record.ga_weeks,
                split=record.split,
                reason=record.reason,
            )
        )
    page = write_review_page(items, out, title=f"Curation review: {spec_model.name}", stage_counts=data.stage_counts)
    click.echo(f"Wrote {page} ({len(items)} images)")


def _placeholder() -> Any:
    import numpy as np

    return np.zeros((96, 96), dtype=np.uint8)


@data_group.command("train-segmenter")
@click.option("--hc18", "hc18_folder", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path), help="HC18 folder (with training_set/ and its CSV).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to save the model (default: ~/.sweeper/weights/segmenter/head-segmenter.pt).")
@click.option("--image-size", default=256, show_default=True, help="Side of the square training images, in pixels.")
@click.option("--epochs", default=40, show_default=True, help="Training epochs.")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=5e-3, show_default=True, help="Peak learning rate (cosine decay to 0).")
@click.option("--seed", default=0, show_default=True)
@click.option("--val-fraction", default=0.2, show_default=True, help="Share of HC18 subjects held out for the reported Dice.")
@click.option("--max-images", type=int, help="Use at most this many HC18 images (for quick runs).")
def train_segmenter(hc18_folder: Path, out: Path | None, image_size: int, epochs: int, batch_size: int, lr: float, seed: int, val_fraction: float, max_images: int | None) -> None:
    """Train the head segmenter (a MONAI U-Net with dropout) on HC18 and report held-out Dice.

    HC18's head annotations are filled into masks, and whole subjects are held out, so
    the reported mean Dice is on images the model never saw.
    """
    from pipelines.curation.hc18 import list_hc18, load_hc18_arrays
    from pipelines.curation.segmentation import SegmenterSettings, save_segmenter, train_head_segmenter
    from sweeper.data_setup import default_segmenter_path

    out = out or default_segmenter_path()
    settings = SegmenterSettings(image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_fraction=val_fraction)
    with user_errors():
        records = list_hc18(hc18_folder)
        if max_images is not None:
            records = [record for record in records if record.kept][:max_images]
        arrays = load_hc18_arrays(records, size=(image_size, image_size))
        dropped = sum(1 for record in records if not record.kept)
        click.echo(f"Training on {len(arrays.ids)} HC18 images at {image_size} px ({dropped} unusable records skipped)")
        started = time.perf_counter()

        def on_epoch(summary: Any) -> None:
            click.echo(f"  epoch {summary.epoch}/{epochs}: loss {summary.train_loss:.4f}, held-out Dice {summary.val_mean_dice:.4f} ({summary.seconds:.0f} s elapsed)")

        model, report = train_head_segmenter(arrays.images, arrays.masks, arrays.ids, settings, groups=arrays.groups, on_epoch=on_epoch)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_segmenter(model, settings, report, out)
    report_path = out.with_suffix(".json")
    report_path.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    click.echo(
        f"Held-out mean Dice {report.mean_dice:.4f} on {len(report.val_ids)} images, "
        f"{time.perf_counter() - started:.0f} s; saved {out} and {report_path}"
    )

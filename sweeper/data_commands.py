"""``sweeper data``: run the curation stages alone, review their decisions, train the head segmenter."""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from sweeper.errors import user_errors
from sweeper.signals import sigterm_as_interrupt

# When the CLI imported this module, shortly after the process started: the whole command is timed from here.
_IMPORTED_AT = time.perf_counter()


@click.group("data")
def data_group() -> None:
    """Curate data: prepare the cached arrays, review the decisions, train the head segmenter."""


def _spec_options(function: Any) -> Any:
    function = click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), help="Folder that relative data paths resolve against.")(function)
    function = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec value (repeatable).")(function)
    return click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))(function)


def _load(spec_path: Path, overrides: tuple[str, ...], data_root: Path | None) -> tuple[Any, Path, Path]:
    """Load and check the spec; return (spec, data root, cache folder)."""
    from sweeper.launch import LaunchOptions, check_sources, check_writable, load_spec, resolve_data_root
    from sweeper.paths import default_cache_dir
    from sweeper.spec import SpecError

    options = LaunchOptions(spec_path, list(overrides), data_root)
    _, spec = load_spec(options)
    root = resolve_data_root(options, spec)
    check_sources(spec, root)
    cache_dir = Path(spec.data.cache_dir).expanduser() if spec.data.cache_dir else default_cache_dir()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise SpecError(f"data.cache_dir path {str(cache_dir)!r} is a file, not a folder; choose a folder")
    check_writable(cache_dir, "data.cache_dir")
    return spec, root, cache_dir


def _curate(spec: Any, spec_path: Path, root: Path, cache_dir: Path, *, keep_thumbnails: bool) -> Any:
    """Curate the spec's data with a progress bar; SIGTERM stops it like Ctrl-C."""
    from sweeper.data_setup import prepare_data

    bar: Any = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label="Curating images", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        with sigterm_as_interrupt():
            return prepare_data(
                spec, spec_path=spec_path, data_root=root, cache_dir=cache_dir, keep_thumbnails=keep_thumbnails, on_progress=on_progress
            )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


@data_group.command()
@_spec_options
def prepare(spec: Path, overrides: tuple[str, ...], data_root: Path | None) -> None:
    """Run the curation stages of SPEC alone and print what each stage kept and dropped.

    The table has one row per stage, from listing the sources to sampling the splits,
    and each row's "in" is the previous row's "kept". The result is cached under a key
    of the inputs, settings and weights; a second run reads it back.
    """
    from pipelines.data.dataset import EmptyDatasetError

    with user_errors():
        spec_model, root, cache_dir = _load(spec, overrides, data_root)
        try:
            data = _curate(spec_model, spec, root, cache_dir, keep_thumbnails=False)
        except EmptyDatasetError as error:
            if error.data is not None:
                _print_stage_table(error.data.stage_counts)
            raise
    _print_stage_table(data.stage_counts)
    click.echo("")
    for split, counts in data.counts().items():
        click.echo(f"{split:<6} {counts['healthy']:>5} healthy  {counts['pathological']:>5} pathological")
    _print_timing(data)


def _print_stage_table(rows: list[dict[str, Any]]) -> None:
    width = max([len("Stage"), *(len(str(row["stage"])) for row in rows)])
    click.echo(f"{'Stage':<{width}} {'in':>5} {'kept':>5}  dropped by reason")
    for row in rows:
        notes = f" ({row['notes']})" if row.get("notes") else ""
        click.echo(f"{row['stage']:<{width}} {row['in']:>5} {row['kept']:>5}  {row['dropped']}{notes}")


def _print_timing(data: Any) -> None:
    total = time.perf_counter() - _IMPORTED_AT
    if data.cache_hit:
        ratio = data.first_seconds / max(data.seconds, 1e-6)
        click.echo(
            f"Cache hit {data.cache_key[:12]}: listing, cache read and split took {data.seconds:.2f} s, against "
            f"{data.first_seconds:.2f} s of listing and curation the first time ({ratio:.0f}x faster)"
        )
    else:
        click.echo(f"Prepared in {data.seconds:.2f} s (listing, curation and split) and cached as {data.cache_key[:12]}")
    click.echo(f"The command took {total:.1f} s so far, {max(total - data.seconds, 0.0):.1f} s of it start-up and model loading")


@data_group.command()
@_spec_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the contact sheet [default: $SWEEPER_HOME/review/NAME, NAME being the spec's name].",
)
def review(spec: Path, overrides: tuple[str, ...], data_root: Path | None, out: Path | None) -> None:
    """Write a static HTML contact sheet of every image of SPEC and its curation decision.

    Each card shows the original with the head-mask outline, the final crop, the plane
    label and confidence, the gestational age and the decision. Rejected images go into
    the exclude list named by data.curation.exclude_list, one id and comment per line.
    When too few images are left to split, the sheet is still written, and the command
    then fails with the reason.
    """
    from pipelines.curation.review import ReviewItem, write_review_page
    from pipelines.data.dataset import EmptyDatasetError
    from sweeper.paths import default_review_dir

    failure = None
    with user_errors():
        spec_model, root, cache_dir = _load(spec, overrides, data_root)
        try:
            data = _curate(spec_model, spec, root, cache_dir, keep_thumbnails=True)
        except EmptyDatasetError as error:
            if error.data is None:
                raise
            data, failure = error.data, error

    items = []
    for record in sorted(data.records, key=lambda r: r.id):
        thumbnail, mask = data.thumbnails.get(record.id, (None, None))
        items.append(
            ReviewItem(
                id=record.id,
                original=None if thumbnail is None else thumbnail.astype("float32") / 255.0,
                mask=mask,
                crop=data.crops.get(record.id),
                plane=record.plane or None,
                plane_confidence=record.plane_confidence,
                ga_weeks=record.ga_weeks,
                split=record.split,
                reason=record.reason,
            )
        )
    folder = out if out is not None else default_review_dir(spec_model.name)
    page = write_review_page(items, folder, title=f"Curation review: {spec_model.name}", stage_counts=data.stage_counts)
    click.echo(f"Wrote {page} ({len(items)} images)")
    if failure is not None:
        raise click.ClickException(" ".join(str(failure).split()))


@data_group.command("train-segmenter")
@click.option("--hc18", "hc18_folder", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path), help="HC18 folder (with training_set/ and its CSV).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to save the model [default: $SWEEPER_HOME/weights/segmenter/head-segmenter.pt, which curation uses].")
@click.option("--image-size", type=click.IntRange(min=32), default=256, show_default=True, help="Side of the square training images, in pixels; a multiple of 16.")
@click.option("--epochs", type=click.IntRange(min=1), default=40, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Images per training step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-3, show_default=True, help="Peak learning rate (cosine decay to 0).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the weights, the held-out subjects and the augmentation.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True, help="Share of HC18 subjects held out for the reported Dice.")
@click.option("--max-images", type=click.IntRange(min=2), help="Use at most this many usable HC18 images (for quick runs).")
def train_segmenter(hc18_folder: Path, out: Path | None, image_size: int, epochs: int, batch_size: int, lr: float, seed: int, val_fraction: float, max_images: int | None) -> None:
    """Train the head segmenter (a MONAI U-Net with dropout) on HC18 and report held-out Dice.

    HC18's head annotations are filled into masks, and whole subjects are held out, so
    the reported mean Dice is on images the model never saw. A Dice below 0.9 gets a
    warning: curation with such a model drops or mis-crops many heads.
    """
    from pipelines.curation.hc18 import list_hc18, load_hc18_arrays
    from pipelines.curation.segmentation import MIN_HELD_OUT_DICE, SegmenterLossError, SegmenterSettings, save_segmenter, train_head_segmenter
    from sweeper.data_setup import default_segmenter_path

    downsampling = math.prod(SegmenterSettings().strides)
    if image_size % downsampling:
        raise click.BadParameter(
            f"{image_size} is not a multiple of {downsampling}, which the U-Net's downsampling needs; use "
            f"{round(image_size / downsampling) * downsampling}",
            param_hint="'--image-size'",
        )
    default_out = out is None
    out = default_segmenter_path() if out is None else out
    _check_writable_file(out)
    try:
        records = list_hc18(hc18_folder)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(f"--hc18 {hc18_folder}: {error}") from None

    usable = [record for record in records if record.kept]
    chosen = usable if max_images is None else usable[:max_images]
    arrays = load_hc18_arrays(chosen, size=(image_size, image_size))
    skipped = len(records) - len(usable) + len(chosen) - len(arrays.ids)
    limit = f", the first {len(chosen)} of {len(usable)} usable (--max-images)" if len(chosen) < len(usable) else ""
    click.echo(f"Training on {len(arrays.ids)} HC18 images at {image_size} px{limit}; {skipped} unusable records skipped")
    subjects = len(set(arrays.groups))
    if subjects < 2:
        raise click.ClickException(
            f"the {len(arrays.ids)} usable images come from {subjects} HC18 subject(s), but holding subjects out "
            f"for the Dice needs at least 2; raise --max-images"
        )

    settings = SegmenterSettings(image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_fraction=val_fraction)
    started = time.perf_counter()

    def on_epoch(summary: Any) -> None:
        click.echo(f"  epoch {summary.epoch}/{epochs}: loss {summary.train_loss:.4f}, held-out Dice {summary.val_mean_dice:.4f} ({summary.seconds:.0f} s elapsed)")

    try:
        model, report = train_head_segmenter(arrays.images, arrays.masks, arrays.ids, settings, groups=arrays.groups, on_epoch=on_epoch)
    except SegmenterLossError as error:
        raise click.ClickException(str(error)) from None
    report_path = out.with_suffix(".json")
    try:
        save_segmenter(model, settings, report, out)
        report_path.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    except OSError as error:
        raise click.ClickException(f"could not save the segmenter to {out}: {error.strerror or error}") from None
    click.echo(
        f"Held-out mean Dice {report.mean_dice:.4f} on {len(report.val_ids)} images, "
        f"{time.perf_counter() - started:.0f} s; saved {out} and {report_path}"
    )
    if report.mean_dice < MIN_HELD_OUT_DICE:
        where = (
            " It is now the default segmenter that curation uses unless data.curation.segmentation.weights or "
            "$SWEEPER_SEGMENTER_WEIGHTS names another; pass --out for quick runs."
            if default_out
            else ""
        )
        click.echo(
            f"Warning: held-out Dice {report.mean_dice:.3f} is below {MIN_HELD_OUT_DICE:g}, so curation with this model "
            f"drops or mis-crops many heads; train longer (--epochs) or at a larger --image-size.{where}",
            err=True,
        )


def _check_writable_file(path: Path) -> None:
    """Fail before training if ``path``'s folder cannot be created or written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-check-"):
            pass
    except OSError as error:
        raise click.ClickException(f"--out {path} cannot be written ({error.strerror or error}); choose another path") from None

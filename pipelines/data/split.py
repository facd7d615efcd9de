"""Split records into train, val and test by source group, so no group falls in two splits.

Healthy groups are shared out between train, val and test by the configured
fractions; groups holding any pathological image go to val or test only, so the
training set is healthy. Evaluation splits can then be thinned to a number of images
per source frame and a maximum per label, picking groups in turn so that the
selection spreads over as many patients and cases as possible.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from pipelines.data.naming import is_augmented_copy
from pipelines.data.records import HEALTHY, PATHOLOGICAL, ImageRecord

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """The data cannot be split as configured; the message says what is missing."""


class TooFewGroupsError(SplitError):
    """Too few healthy or pathological source groups are left to fill train, val and test."""


@dataclass(frozen=True)
class SplitSettings:
    """Fractions of groups per split, and caps on the images used from each split."""

    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    images_per_frame: int | None = 1
    max_val: dict[str, int | None] = field(default_factory=dict)
    max_test: dict[str, int | None] = field(default_factory=dict)
    max_train: int | None = None


def split_by_group(records: list[ImageRecord], settings: SplitSettings) -> None:
    """Assign ``split`` to every kept record, and drop the images left out by the caps.

    Groups of ``train``-role sources all go to train, groups of ``eval``-role sources to
    val or test, and groups of ``split``-role sources are shared out by the fractions.
    """
    rng = np.random.default_rng(settings.seed)
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        if record.kept:
            groups[record.group].append(record)

    roles = {name: _group_role(name, members) for name, members in groups.items()}
    healthy = {name for name, members in groups.items() if all(r.label == HEALTHY for r in members)}
    assignment = {name: "train" for name, role in roles.items() if role == "train"}
    split_healthy = sorted(name for name in healthy if roles[name] == "split")
    if split_healthy or not assignment:
        assignment.update(_share_healthy_groups(split_healthy, settings, rng))
    eval_healthy = sorted(name for name in healthy if roles[name] == "eval")
    assignment.update(_share_between_val_and_test(eval_healthy, settings, rng, kind="healthy", required=False))
    pathological = sorted(name for name in groups if name not in healthy)
    assignment.update(_share_between_val_and_test(pathological, settings, rng, kind="pathological", required=True))

    for name, members in groups.items():
        for record in members:
            record.split = assignment[name]

    _thin_evaluation_split(groups, assignment, "val", settings.max_val, settings.images_per_frame, rng)
    _thin_evaluation_split(groups, assignment, "test", settings.max_test, settings.images_per_frame, rng)
    if settings.max_train is not None:
        train = sorted((r for r in records if r.kept and r.split == "train"), key=lambda r: r.id)
        for index in sorted(rng.permutation(len(train))[settings.max_train :]):
            train[index].drop(f"not sampled: max_train={settings.max_train}")


def _group_role(name: str, members: list[ImageRecord]) -> str:
    roles = {record.role for record in members}
    if len(roles) > 1:
        raise SplitError(
            f"group {name!r} has images in sources of roles {sorted(roles)}; a group must come from sources "
            f"of one role, or it could reach training and evaluation at once"
        )
    return roles.pop()


def _share_healthy_groups(names: list[str], settings: SplitSettings, rng: np.random.Generator) -> dict[str, str]:
    if len(names) < 3:
        raise TooFewGroupsError(
            f"found {len(names)} healthy source groups, but a group split needs at least 3 "
            f"(one each for train, val and test); add healthy data"
        )
    order = [names[i] for i in rng.permutation(len(names))]
    num_val = max(1, round(settings.val_fraction * len(names)))
    num_test = max(1, round(settings.test_fraction * len(names)))
    if num_val + num_test >= len(names):
        num_val = num_test = 1
    assignment = {name: "val" for name in order[:num_val]}
    assignment.update({name: "test" for name in order[num_val : num_val + num_test]})
    assignment.update({name: "train" for name in order[num_val + num_test :]})
    return assignment


def _share_between_val_and_test(
    names: list[str], settings: SplitSettings, rng: np.random.Generator, *, kind: str, required: bool
) -> dict[str, str]:
    if not names and not required:
        return {}
    if len(names) < 2:
        raise TooFewGroupsError(
            f"found {len(names)} {kind} source groups for evaluation, but val and test each need at least one; "
            f"add {kind} data"
        )
    order = [names[i] for i in rng.permutation(len(names))]
    share = settings.val_fraction / (settings.val_fraction + settings.test_fraction)
    num_val = min(max(1, round(share * len(names))), len(names) - 1)
    return {name: ("val" if index < num_val else "test") for index, name in enumerate(order)}


def _thin_evaluation_split(
    groups: dict[str, list[ImageRecord]],
    assignment: dict[str, str],
    split: str,
    caps: dict[str, int | None],
    images_per_frame: int | None,
    rng: np.random.Generator,
) -> None:
    """Keep at most ``images_per_frame`` per frame, then fill each label's cap group by group."""
    names = sorted(name for name, target in assignment.items() if target == split)
    queues: dict[str, list[ImageRecord]] = {}
    for name in names:
        members = sorted(groups[name], key=lambda r: (r.frame, is_augmented_copy(r.id), r.id))
        if images_per_frame is not None:
            taken: dict[str, int] = defaultdict(int)
            for record in members:
                taken[record.frame] += 1
                if taken[record.frame] > images_per_frame:
                    record.drop(f"not sampled: images_per_frame={images_per_frame}")
        queues[name] = [record for record in members if record.kept]

    for label in (HEALTHY, PATHOLOGICAL):
        cap = caps.get(label)
        if cap is None:
            continue
        order = [names[i] for i in rng.permutation(len(names))]
        chosen = 0
        # Take one image per group in turn, so the images spread over groups.
        pending = {name: [r for r in queues[name] if r.label == label] for name in order}
        while chosen < cap and any(pending.values()):
            for name in order:
                if pending[name] and chosen < cap:
                    pending[name].pop(0)
                    chosen += 1
        for name in order:
            for record in pending[name]:
                record.drop(f"not sampled: max_{split}.{label}={cap}")


def split_counts(records: list[ImageRecord]) -> dict[str, dict[str, int]]:
    """Count kept images per split and label."""
    counts = {split: {HEALTHY: 0, PATHOLOGICAL: 0} for split in SPLITS}
    for record in records:
        if record.kept and record.split in counts:
            counts[record.split][record.label] += 1
    return counts

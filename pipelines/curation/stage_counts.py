"""Per-stage counts of images in, kept and dropped by reason, as the rows of the stage table.

Stages are listed in pipeline order. Every image that is still kept enters every stage
that runs, and a stage passes on the images it does not check (counted in its notes),
so each row's "in" equals the previous row's "kept".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

LIST = "list"
READ = "read"
AGE_FROM_METADATA = "gestational age from metadata"
PLANE = "plane"
SEGMENTATION = "segmentation"
AGE_FROM_HEAD = "gestational age from head"
CROP = "crop"
EXCLUDE_LIST = "exclude list"
SAMPLING = "sampling"

STAGES = (LIST, READ, AGE_FROM_METADATA, PLANE, SEGMENTATION, AGE_FROM_HEAD, CROP, EXCLUDE_LIST, SAMPLING)

StageRow = dict[str, object]


@dataclass
class StageCounts:
    """Per stage: images in, kept, dropped by reason kind, and notes on images kept."""

    entered: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    dropped: dict[str, Counter[str]] = field(default_factory=dict)
    notes: dict[str, Counter[str]] = field(default_factory=dict)

    def record(self, stage: str, dropped_for: str | None) -> None:
        """Count one image through ``stage``: kept when ``dropped_for`` (a short reason kind) is None."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, but got {stage!r}")
        self.entered[stage] += 1
        if dropped_for is None:
            self.kept[stage] += 1
        else:
            self.dropped.setdefault(stage, Counter())[dropped_for] += 1

    def note(self, stage: str, text: str) -> None:
        """Count something a stage observed on an image it kept (such as a missing age)."""
        self.notes.setdefault(stage, Counter())[text] += 1

    def rows(self) -> list[StageRow]:
        """Return one row per stage that saw images, in pipeline order.

        A row has ``stage``, ``in``, ``kept``, ``drops`` (pairs of reason kind and count,
        most first), and ``dropped`` and ``notes`` as printable text.
        """
        rows = []
        for stage in STAGES:
            if not self.entered[stage]:
                continue
            drops = self.dropped.get(stage, Counter()).most_common()
            notes = self.notes.get(stage, Counter()).most_common()
            rows.append(
                {
                    "stage": stage,
                    "in": self.entered[stage],
                    "kept": self.kept[stage],
                    "drops": [[reason, count] for reason, count in drops],
                    "dropped": ", ".join(f"{count} {reason}" for reason, count in drops) or "none",
                    "notes": ", ".join(f"{count} {text}" for text, count in notes),
                }
            )
        return rows


def largest_drops(rows: list[StageRow], *, limit: int = 3) -> str:
    """Describe the ``limit`` largest drops of the stage table, such as "plane: 12 plane Background"."""
    drops = [(int(count), str(row["stage"]), str(reason)) for row in rows for reason, count in row.get("drops", [])]
    drops.sort(key=lambda drop: -drop[0])
    return "; ".join(f"{stage}: {count} {reason}" for count, stage, reason in drops[:limit])

"""Gestational age: parse it from clinical notation, estimate it from head circumference, test a window.

Gestational age (GA) is handled in weeks as a float throughout, so 22+6 (22 weeks and
6 days) is ``22 + 6 / 7``. The head-circumference estimate is Hadlock's regression
(Hadlock et al., "Estimating fetal age: computer-assisted analysis of multiple fetal
growth parameters", Radiology 152:497-501, 1984)::

    GA (weeks) = 8.96 + 0.540 * HC + 0.0003 * HC**3,   HC in cm

>>> format_ga(parse_gestational_age("22+6"))
'22+6'
>>> round(hadlock_ga_weeks(175.0), 2)
20.02
>>> ga_in_window(parse_gestational_age("160 days"))
True
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Literal

DAYS_PER_WEEK = 7

# The window of the second-trimester anomaly scan, 19+0 to 22+6 inclusive.
DEFAULT_LOW_WEEKS = 19.0
DEFAULT_HIGH_WEEKS = 22 + 6 / DAYS_PER_WEEK

# No fetus is older than this, so a larger value is usually a number of days read as weeks.
MAX_GA_WEEKS = 45.0

# Bounds are compared with this slack, so that 22+6 computed two ways still counts as inside.
WINDOW_TOLERANCE_WEEKS = 1e-9

MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "none"})

ACCEPTED_FORMS = (
    "weeks+days ('22+6', '22+6 weeks'), weeks and days ('22w6d', '22 weeks 6 days'), "
    "decimal weeks ('21.5', '21.5 weeks', '21.5w'), days ('160d', '160 days'), a bare number of days in a "
    "folder-csv column with ga_unit: days, or blank for a missing value"
)

_WEEK_WORD = r"(?:w|wk|wks|week|weeks)"
_DAY_WORD = r"(?:d|day|days)"
_WEEKS_PLUS_DAYS = re.compile(rf"(?P<weeks>\d+)\s*\+\s*(?P<days>\d+)\s*(?:{_WEEK_WORD})?")
_WEEKS_AND_DAYS = re.compile(rf"(?P<weeks>\d+)\s*{_WEEK_WORD}\s*(?P<days>\d+)\s*{_DAY_WORD}")
_NUMBER_WITH_UNIT = re.compile(rf"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>{_WEEK_WORD}|{_DAY_WORD})?")


def parse_gestational_age(value: object, *, unit: Literal["weeks", "days"] = "weeks") -> float | None:
    """Parse a gestational age into weeks, or return None for a blank or NaN value.

    ``unit`` applies to a bare number ("160", ``160.0``). A unit written in the text
    ("160 days", "21.5 weeks") and the weeks+days forms ("22+6", "22w6d") override it.
    Text is matched case-insensitively with surrounding whitespace ignored.

    Raises:
        ValueError: ``value`` matches none of the accepted forms, its days part is not 0 to 6,
            or the age is negative or above ``MAX_GA_WEEKS``.
    """
    if unit not in ("weeks", "days"):
        raise ValueError(f"unit must be 'weeks' or 'days', but got {unit!r}")

    if value is None:
        return None

    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise ValueError(
            f"gestational age must be a number or text, but got {value!r} ({type(value).__name__}); accepted forms: {ACCEPTED_FORMS}"
        )

    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return None
        weeks = number / DAYS_PER_WEEK if unit == "days" else number
        return _checked_weeks(weeks, value)

    return _parse_text(value, unit)


def _parse_text(value: str, unit: str) -> float | None:
    text = value.strip().lower()
    if text in MISSING_TEXT:
        return None

    match = _WEEKS_PLUS_DAYS.fullmatch(text) or _WEEKS_AND_DAYS.fullmatch(text)
    if match:
        weeks, days = int(match["weeks"]), int(match["days"])
        if days >= DAYS_PER_WEEK:
            carried_weeks, carried_days = divmod(weeks * DAYS_PER_WEEK + days, DAYS_PER_WEEK)
            raise ValueError(
                f"the days part of gestational age {value!r} must be 0 to 6, but got {days}; "
                f"write {carried_weeks}+{carried_days} instead of {weeks}+{days}"
            )
        return _checked_weeks(weeks + days / DAYS_PER_WEEK, value)

    match = _NUMBER_WITH_UNIT.fullmatch(text)
    if match:
        number = float(match["number"])
        written_unit = match["unit"]
        in_days = written_unit[0] == "d" if written_unit else unit == "days"
        return _checked_weeks(number / DAYS_PER_WEEK if in_days else number, value)

    raise ValueError(f"gestational age {value!r} is not in a recognised form; accepted forms: {ACCEPTED_FORMS}")


def _checked_weeks(weeks: float, value: object) -> float:
    if not math.isfinite(weeks) or weeks < 0 or weeks > MAX_GA_WEEKS:
        raise ValueError(
            f"gestational age must be between 0 and {MAX_GA_WEEKS:g} weeks, but {value!r} gives {weeks:g} weeks; "
            f"if the value is in days, write '{value} days'"
        )
    return weeks


def hadlock_ga_weeks(hc_mm: float) -> float:
    """Estimate gestational age in weeks from head circumference in mm with Hadlock's 1984 formula.

    >>> round(hadlock_ga_weeks(100.0), 2)  # 8.96 + 0.540 * 10 + 0.0003 * 10**3
    14.66
    """
    if isinstance(hc_mm, bool) or not isinstance(hc_mm, numbers.Real) or not math.isfinite(hc_mm) or hc_mm <= 0:
        raise ValueError(f"head circumference must be a positive number of mm, but got {hc_mm!r}")

    hc_cm = float(hc_mm) / 10.0
    return 8.96 + 0.540 * hc_cm + 0.0003 * hc_cm**3


def ga_in_window(weeks: float, low: float = DEFAULT_LOW_WEEKS, high: float = DEFAULT_HIGH_WEEKS) -> bool:
    """Tell whether a gestational age in weeks lies in ``[low, high]``, both ends included.

    The default window is 19+0 to 22+6. A continuous estimate between 22+6 and 23+0, such
    as a Hadlock estimate of 22.9 weeks, falls outside it.
    """
    for name, number in (("weeks", weeks), ("low", low), ("high", high)):
        if isinstance(number, bool) or not isinstance(number, numbers.Real) or not math.isfinite(number):
            raise ValueError(f"{name} must be a finite number of weeks, but got {number!r}; parse text with parse_gestational_age first")

    if low > high:
        raise ValueError(f"low must be at most high, but got low={low!r} and high={high!r}")

    return low - WINDOW_TOLERANCE_WEEKS <= weeks <= high + WINDOW_TOLERANCE_WEEKS


def format_ga(weeks: float) -> str:
    """Format a gestational age in weeks as weeks+days, rounded to the nearest day ("22+6").

    Half a day rounds up, so 21.5 weeks (150.5 days) gives "21+4".

    >>> format_ga(22.99)  # 160.93 days round to 161 days, which is 23+0
    '23+0'
    """
    if isinstance(weeks, bool) or not isinstance(weeks, numbers.Real) or not math.isfinite(weeks) or weeks < 0:
        raise ValueError(f"weeks must be a finite, non-negative number, but got {weeks!r}")

    total_days = math.floor(float(weeks) * DAYS_PER_WEEK + 0.5)
    whole_weeks, days = divmod(total_days, DAYS_PER_WEEK)
    return f"{whole_weeks}+{days}"

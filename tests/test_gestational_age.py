"""Gestational age: parsing clinical notation, Hadlock's estimate from head circumference, the window."""

from __future__ import annotations

import math

import pytest

from pipelines.curation.gestational_age import format_ga, ga_in_window, hadlock_ga_weeks, parse_gestational_age
from pipelines.curation.hc18 import list_hc18
from tests.conftest import DATA_ROOT

HC18 = DATA_ROOT / "hc18"


@pytest.mark.parametrize(
    ("value", "weeks"),
    [
        ("22+6", 22 + 6 / 7),
        ("22 + 6", 22 + 6 / 7),
        ("22+6 weeks", 22 + 6 / 7),
        ("22+6w", 22 + 6 / 7),
        ("19+0", 19.0),
        ("22w6d", 22 + 6 / 7),
        ("22w 6d", 22 + 6 / 7),
        ("22 weeks 6 days", 22 + 6 / 7),
        ("21.5", 21.5),
        ("21.5 weeks", 21.5),
        ("21.5w", 21.5),
        ("21.5 WKS", 21.5),
        ("  20 ", 20.0),
        ("160d", 160 / 7),
        ("160 days", 160 / 7),
        ("160 Days", 160 / 7),
        (21, 21.0),
        (21.5, 21.5),
    ],
)
def test_parse_accepted_forms(value: object, weeks: float) -> None:
    assert parse_gestational_age(value) == pytest.approx(weeks, abs=1e-12)


@pytest.mark.parametrize(("value", "weeks"), [(160, 160 / 7), (160.0, 160 / 7), ("160", 160 / 7), ("133", 19.0)])
def test_parse_bare_number_in_days(value: object, weeks: float) -> None:
    assert parse_gestational_age(value, unit="days") == pytest.approx(weeks, abs=1e-12)


@pytest.mark.parametrize("value", ["22+6", "21.5 weeks", "160 days"])
def test_parse_written_unit_overrides_unit(value: str) -> None:
    assert parse_gestational_age(value, unit="days") == parse_gestational_age(value, unit="weeks")


@pytest.mark.parametrize("value", [None, "", "   ", "NaN", "nan", "NA", "n/a", float("nan")])
def test_parse_missing_is_none(value: object) -> None:
    assert parse_gestational_age(value) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", r"gestational age 'abc' is not in a recognised form; accepted forms: weeks\+days"),
        ("22+6+1", r"'22\+6\+1' is not in a recognised form"),
        ("-3", r"'-3' is not in a recognised form"),
        ("22 weeks 6", r"'22 weeks 6' is not in a recognised form"),
        ("22+7", r"days part of gestational age '22\+7' must be 0 to 6, but got 7; write 23\+0 instead of 22\+7"),
        ("22+9", r"must be 0 to 6, but got 9; write 23\+2 instead of 22\+9"),
        ("19w15d", r"must be 0 to 6, but got 15; write 21\+1 instead of 19\+15"),
        ("160", r"must be between 0 and 45 weeks, but '160' gives 160 weeks; if the value is in days, write '160 days'$"),
        (46.0, r"must be between 0 and 45 weeks, but 46.0 gives 46 weeks"),
        (-1, r"must be between 0 and 45 weeks, but -1 gives -1 weeks"),
        (math.inf, r"must be between 0 and 45 weeks"),
        (True, r"must be a number or text, but got True \(bool\)"),
        ([22], r"must be a number or text, but got \[22\] \(list\)"),
    ],
)
def test_parse_rejects_invalid_values(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_gestational_age(value)


def test_parse_rejects_unknown_unit() -> None:
    with pytest.raises(ValueError, match=r"unit must be 'weeks' or 'days', but got 'months'"):
        parse_gestational_age("20", unit="months")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hc_mm", "weeks"),
    [
        # HC 100 mm = 10 cm: 8.96 + 0.540 * 10 + 0.0003 * 1000 = 8.96 + 5.4 + 0.3 = 14.66
        (100.0, 14.66),
        # HC 150 mm = 15 cm: 8.96 + 8.1 + 0.0003 * 3375 = 8.96 + 8.1 + 1.0125 = 18.0725
        (150.0, 18.0725),
        # HC 175 mm = 17.5 cm: 8.96 + 9.45 + 0.0003 * 5359.375 = 8.96 + 9.45 + 1.6078125 = 20.0178125
        (175.0, 20.0178125),
        # HC 250 mm = 25 cm: 8.96 + 13.5 + 0.0003 * 15625 = 8.96 + 13.5 + 4.6875 = 27.1475
        (250.0, 27.1475),
    ],
)
def test_hadlock_known_values(hc_mm: float, weeks: float) -> None:
    assert hadlock_ga_weeks(hc_mm) == pytest.approx(weeks, abs=1e-9)


@pytest.mark.parametrize("hc_mm", [0.0, -10.0, math.nan, math.inf])
def test_hadlock_rejects_invalid_hc(hc_mm: float) -> None:
    with pytest.raises(ValueError, match=r"head circumference must be a positive number of mm, but got"):
        hadlock_ga_weeks(hc_mm)


def test_hadlock_on_hc18_spans_trimesters() -> None:
    records = [record for record in list_hc18(HC18) if record.kept]
    weeks = [hadlock_ga_weeks(record.hc_mm) for record in records]
    in_window = sum(ga_in_window(value) for value in weeks)

    # Hadlock's formula puts 296 of the 600 rows in 19+0 to 22+6.
    assert len(records) == 600
    assert 0.4 <= in_window / len(records) <= 0.6
    assert min(weeks) < 14
    assert max(weeks) > 35


@pytest.mark.parametrize(
    ("text", "inside"),
    [("18+6", False), ("19+0", True), ("20+3", True), ("22+6", True), ("23+0", False), ("160 days", True), ("161 days", False)],
)
def test_window_edges(text: str, inside: bool) -> None:
    weeks = parse_gestational_age(text)

    assert weeks is not None
    assert ga_in_window(weeks) is inside


def test_window_custom_bounds() -> None:
    assert ga_in_window(12.0, low=11.0, high=14 + 1 / 7)
    assert not ga_in_window(14.5, low=11.0, high=14 + 1 / 7)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"weeks": math.nan}, r"weeks must be a finite number of weeks, but got nan"),
        ({"weeks": "20+1"}, r"weeks must be a finite number of weeks, but got '20\+1'; parse text"),
        ({"weeks": 20.0, "low": 23.0, "high": 19.0}, r"low must be at most high, but got low=23.0 and high=19.0"),
    ],
)
def test_window_rejects_invalid_input(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ga_in_window(**arguments)


@pytest.mark.parametrize(
    ("weeks", "text"),
    [(22 + 6 / 7, "22+6"), (19.0, "19+0"), (21.5, "21+4"), (22.99, "23+0"), (160 / 7, "22+6"), (0.0, "0+0")],
)
def test_format_ga(weeks: float, text: str) -> None:
    assert format_ga(weeks) == text


@pytest.mark.parametrize("text", ["19+0", "20+1", "22+6", "36+3"])
def test_format_ga_round_trip(text: str) -> None:
    weeks = parse_gestational_age(text)

    assert weeks is not None
    assert format_ga(weeks) == text


@pytest.mark.parametrize("weeks", [-0.5, math.nan, math.inf])
def test_format_ga_rejects_invalid_weeks(weeks: float) -> None:
    with pytest.raises(ValueError, match=r"weeks must be a finite, non-negative number, but got"):
        format_ga(weeks)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ([True, 22], r"got a true/false value"),
        (["19+0", False], r"got a true/false value"),
        (["19+0", "22+9"], r"write 23\+2 instead of 22\+9"),
        ([19, 50], r"but 50.0 gives 50 weeks; if the value is in days, write '50.0 days'"),
    ],
    ids=["true", "false", "days-carry", "days-hint"],
)
def test_spec_window_rejects_invalid_ages(window: list, message: str) -> None:
    from sweeper.spec import GestationalAgeSpec

    with pytest.raises(ValueError, match=message) as raised:
        GestationalAgeSpec(window=window)
    assert "unit=" not in str(raised.value)

"""`--until HH:MM`: parsing, the roll-over to tomorrow, bad values, and the smaller of --until and max_time."""

from __future__ import annotations

from datetime import datetime

import pytest

from finetune.errors import RunError
from finetune.train import deadline_from_until, time_budget_s

EVENING = datetime(2026, 12, 1, 22, 30, 15)


@pytest.mark.parametrize(
    ("until", "now", "seconds"),
    [
        ("23:00", EVENING, 29 * 60 + 45),  # later today
        ("07:00", EVENING, 8 * 3600 + 29 * 60 + 45),  # past midnight: tomorrow morning
        ("22:30", EVENING, 24 * 3600 - 15),  # this minute already began: tomorrow's
        ("7:05", datetime(2026, 12, 1, 7, 0), 5 * 60),  # one-digit hour
        ("00:00", datetime(2026, 12, 31, 23, 59), 60),  # across a year's end
        ("23:59", datetime(2026, 12, 1, 0, 0), 23 * 3600 + 59 * 60),
    ],
)
def test_until_is_the_next_such_wall_clock_time(until, now, seconds):
    assert deadline_from_until(until, now=now) == seconds


@pytest.mark.parametrize("bad", ["7", "7pm", "24:00", "07:60", "-1:30", "07:00:00", "", "seven:30", "07:", ":30"])
def test_a_bad_until_is_one_line_naming_the_option(bad):
    with pytest.raises(RunError) as info:
        deadline_from_until(bad, now=EVENING)
    message = str(info.value)
    assert message.startswith("--until") and repr(bad) in message and "HH:MM" in message and "\n" not in message


@pytest.mark.parametrize(
    ("max_time", "until", "expected"),
    [
        (None, None, None),
        (3600.0, None, 3600.0),
        (None, "23:00", 29 * 60 + 45),
        (3600.0, "23:00", 29 * 60 + 45),  # --until comes first
        (600.0, "07:00", 600.0),  # max_time comes first
    ],
)
def test_the_budget_is_the_smaller_of_until_and_max_time(max_time, until, expected):
    assert time_budget_s(max_time, until, now=EVENING) == expected

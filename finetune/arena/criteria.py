"""The questions the arena asks, one per criterion."""

from __future__ import annotations

QUESTIONS = {
    "style": "Which sounds more like the persona?",
    "quality": "Which answer is better overall?",
}
CRITERIA = tuple(QUESTIONS)

"""Reading the BAH (Behavioural Ambivalence/Hesitancy) video-level split files.

A split file has one video per line, UTF-8, no header::

    <video_id>,<label>,<transcript>

split on the first two commas only (transcripts contain commas). ``label`` is
1 (A/H present in the video) or 0 (absent). The video id carries the
participant and the question the avatar asked, e.g.
``Videos/82725/Visite_1/82725_Question_1_2024-11-19_15-12-23_Video.mp4``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "QUESTION_PROMPTS",
    "QUESTION_INTENTS",
    "BahFormatError",
    "BahItem",
    "read_split",
    "question_of",
    "participant_of",
]

# The seven prompts of the BAH protocol (BAH paper, Table 1). A fact table: the
# avatar asks exactly these, so a session may carry one of them as context.
QUESTION_PROMPTS: dict[int, str] = {
    1: "Tell us about an activity you commonly do after waking up.",
    2: "Talk about an activity that brings you joy, for example, a hobby. Tell us why.",
    3: (
        "Talk about an activity you dislike doing, for example, a chore or something you "
        "find boring or annoying. Tell us why."
    ),
    4: (
        "Tell us about something you enjoy doing but wish you stopped doing (like a guilty "
        "pleasure) or something you don't do but wish you did."
    ),
    5: (
        "Tell us about an activity you are almost always willing to do, for example, with "
        "friends, at work, at home."
    ),
    6: (
        "Tell us about something people around you do, but that you would not be willing to "
        "do, for example, with friends, at work, at home."
    ),
    7: (
        "Tell us about something you could have done already but haven't done yet, for "
        "example, something you are procrastinating or haven't made up your mind about."
    ),
}

# The response each question was designed to elicit (participants were not told).
QUESTION_INTENTS: dict[int, str] = {
    1: "neutral",
    2: "positive",
    3: "negative",
    4: "ambivalent",
    5: "willing",
    6: "resistant",
    7: "hesitant",
}

_QUESTION_RE = re.compile(r"_Question_([1-7])_")
_PARTICIPANT_RE = re.compile(r"(?:^|/)Videos/([^/]+)/")


class BahFormatError(ValueError):
    """A malformed line in a BAH split file (the message names the file and line)."""


@dataclass(frozen=True, slots=True)
class BahItem:
    """One video of a split: id, video-level label, whole-answer transcript, question."""

    video_id: str
    label: int
    transcript: str
    question: int | None

    @property
    def participant(self) -> str | None:
        """Participant id taken from the video id, or None if it has no ``Videos/<pid>/``."""
        return participant_of(self.video_id)


def question_of(video_id: str) -> int | None:
    """Return the question number (1-7) in a BAH video id, or None if it has none."""
    m = _QUESTION_RE.search(video_id)
    return int(m.group(1)) if m else None


def participant_of(video_id: str) -> str | None:
    """Return the participant id (``Videos/<pid>/...``) of a BAH video id, or None."""
    m = _PARTICIPANT_RE.search(video_id)
    return m.group(1) if m else None


def parse_line(line: str, *, where: str = "<line>") -> BahItem:
    """Parse one ``video_id,label,transcript`` line; raise BahFormatError if malformed."""
    line = line.rstrip("\r\n")
    parts = line.split(",", 2)
    if len(parts) < 3:
        raise BahFormatError(
            f"{where}: expected 'video_id,label,transcript' (at least two commas), "
            f"got {line[:80]!r}"
        )
    video_id, label_s, transcript = parts
    video_id = video_id.strip()
    if not video_id:
        raise BahFormatError(f"{where}: empty video_id")
    label_s = label_s.strip()
    if label_s not in ("0", "1"):
        raise BahFormatError(f"{where}: label must be 0 or 1, got {label_s[:20]!r}")
    return BahItem(
        video_id=video_id,
        label=int(label_s),
        transcript=transcript.strip(),
        question=question_of(video_id),
    )


def read_split(path: str | Path) -> list[BahItem]:
    """Read a BAH video-level split file; blank lines are skipped, bad lines raise."""
    p = Path(path)
    items: list[BahItem] = []
    # utf-8-sig: tolerate a byte-order mark written by some editors. Lines end at "\n"
    # only (a CRLF's "\r" is stripped by parse_line): a lone "\r" inside a transcript is
    # text, not a line break that would cut the line in two.
    seen: dict[str, int] = {}
    try:
        with p.open("r", encoding="utf-8-sig", newline="\n") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                item = parse_line(line, where=f"{p}:{lineno}")
                if item.video_id in seen:
                    raise BahFormatError(
                        f"{p}:{lineno}: video_id {item.video_id!r} repeats line "
                        f"{seen[item.video_id]}"
                    )
                seen[item.video_id] = lineno
                items.append(item)
    except UnicodeDecodeError as e:
        raise BahFormatError(f"{p}: not UTF-8 text ({e.reason})") from None
    except OSError as e:  # permissions, an I/O error, a directory
        raise BahFormatError(f"{p}: cannot read ({e.strerror or e})") from None
    return items

"""The committed JSON Schema of the events (clients/events.schema.json) against real sessions."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing

import jsonschema
import pytest

import stream.events as ev
from models.cues import MODALITIES
from models.face_cues import CUES as FACE_CUES
from models.voice_cues import VOICE_CUES
from models.word_cues import WORD_CUES
from stream.aggregate import METHODS
from tests.conftest import ROOT

SCHEMA_PATH = ROOT / "clients" / "events.schema.json"
EVENT_CLASSES = [
    ev.SessionStarted,
    ev.Transcript,
    ev.Frame,
    ev.Cue,
    ev.Segment,
    ev.Video,
    ev.Status,
    ev.Error,
    ev.SessionEnded,
]


@pytest.fixture(scope="module")
def schema():
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def invalid(validator, events):
    """(index, type, reason) of every event the schema rejects."""
    out = []
    for i, event in enumerate(events):
        errors = list(validator.iter_errors(event))
        if errors:
            best = jsonschema.exceptions.best_match(errors)
            out.append((i, event.get("type"), f"{list(best.absolute_path)}: {best.message}"))
    return out


def test_schema_describes_every_event_class(schema):
    """One definition per dataclass, with the same fields; non-optional fields required."""
    refs = [item["$ref"].rsplit("/", 1)[-1] for item in schema["oneOf"]]
    assert sorted(refs) == sorted(cls.type for cls in EVENT_CLASSES)
    assert sorted(cls.type for cls in ev.Event.__subclasses__()) == sorted(refs)
    for cls in EVENT_CLASSES:
        d = schema["$defs"][cls.type]
        assert d["properties"]["type"] == {"const": cls.type}
        assert d["additionalProperties"] is False
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(d["properties"]) == fields | {"v", "type"}, cls.type
        optional = {f for f in fields if type(None) in typing.get_args(hints[f])}
        assert set(d["required"]) == (fields - optional) | {"v", "type"}, cls.type


def test_schema_enums_follow_the_code(schema):
    defs = schema["$defs"]
    cue = defs["cue"]["properties"]
    assert set(cue["cue"]["enum"]) == {
        *WORD_CUES,
        *VOICE_CUES,
        *FACE_CUES,
        "valence_inconsistency",
    }
    assert cue["modality"]["enum"] == list(MODALITIES)
    assert defs["method"]["enum"] == list(METHODS)
    assert defs["v"] == {"description": "Schema version.", "const": ev.SCHEMA_VERSION}


def _examples() -> list[dict]:
    s = "abc123"
    return [
        ev.SessionStarted(s, models={"asr": "x"}, context="How do you feel about quitting?"),
        ev.SessionStarted(s),
        ev.Transcript(s, t0=0.5, t1=0.9, text="um well", words=[{"w": "um", "t0": 0.5, "t1": 0.7}]),
        ev.Frame(
            s,
            t=0.1,
            p=0.4,
            evidence="prior",
            modalities=dict.fromkeys(("audio", "speech", "video", "face", "text"), True),
            lags={"tick": 0.2},
        ),
        ev.Cue(s, t0=1.0, t1=1.5, cue="hedge", modality="text", strength=0.3, detail="maybe"),
        ev.Cue(s, t0=1.0, t1=1.0, cue="long_pause", modality="voice", strength=1.0),
        ev.Segment(s, t0=1.0, t1=3.0, peak=0.8),
        ev.Video(s, t=1.0, p=0.7, label=1, threshold=0.6, final=True),
        ev.Status(s, t=5.0, lags={"tick": 0.3}, received_video_frames=10, rtf=0.4),
        ev.Status(s, t=5.0, message="analysis rate lowered"),
        ev.Error(s, code="bad_media", message="video frame rejected"),
        ev.SessionEnded(s, duration=3.0, reason="deleted"),
        ev.SessionEnded(
            s,
            duration=3.0,
            decision={"p": 0.7, "label": 1, "threshold": 0.6, "method": "last"},
        ),
    ]


def test_constructed_events_validate(validator):
    events = [e.to_dict() for e in _examples()]
    assert invalid(validator, events) == []


MALFORMED = [
    ("no type", lambda e: e.pop("type")),
    ("unknown type", lambda e: e.update(type="frames")),
    ("schema version 2", lambda e: e.update(v=2)),
    ("missing p", lambda e: e.pop("p")),
    ("p above 1", lambda e: e.update(p=1.2)),
    ("p as a string", lambda e: e.update(p="0.4")),
    ("negative media time", lambda e: e.update(t=-0.1)),
    ("unknown evidence", lambda e: e.update(evidence="face")),
    ("modality missing", lambda e: e["modalities"].pop("face")),
    ("lag not a number", lambda e: e["lags"].update(tick="slow")),
    ("words as a float", lambda e: e.update(words=2.5)),
    ("an undeclared field", lambda e: e.update(text="leaked words")),
    ("empty session id", lambda e: e.update(session="")),
]


@pytest.mark.parametrize("name,mutate", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_schema_rejects_malformed_frame(validator, name, mutate):
    event = next(e.to_dict() for e in _examples() if e.type == "frame")
    assert validator.is_valid(event)
    bad = copy.deepcopy(event)
    mutate(bad)
    assert not validator.is_valid(bad), name


def test_schema_rejects_malformed_others(validator):
    cue = ev.Cue("s", t0=1.0, t1=1.5, cue="hedge", modality="text", strength=0.3).to_dict()
    ended = ev.SessionEnded("s", duration=2.0, decision={"p": 0.5, "label": 0}).to_dict()
    words = ev.Transcript("s", text="hi", words=[{"w": "hi", "t0": 0.0}]).to_dict()
    bad = [
        {**cue, "cue": "yawn"},
        {**cue, "modality": "body"},
        {**cue, "strength": 1.5},
        ended,  # decision without threshold and method
        words,  # word without t1
        ev.Video("s", label=2).to_dict(),
        ev.Error("s", code="Bad Media!", message="x").to_dict(),
    ]
    assert [i for i, _, _ in invalid(validator, bad)] == list(range(len(bad)))


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_event_of_an_analyze_run_validates(validator, analyzed_call):
    out, _ = analyzed_call
    events = _read(out / "talking_face.jsonl")
    kinds = {e["type"] for e in events}
    assert {"session.started", "transcript", "frame", "video", "status", "session.ended"} <= kinds
    assert len(events) > 300
    assert invalid(validator, events) == []


def test_every_event_of_a_live_call_validates(validator, live_call_events):
    events = live_call_events
    assert events[0]["type"] == "session.started" and events[-1]["type"] == "session.ended"
    assert {"transcript", "frame", "video", "status"} <= {e["type"] for e in events}
    assert invalid(validator, events) == []

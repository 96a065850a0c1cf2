"""Blend-mode annotations (WP-K7 / SPEC §5): valid keys configure, anything bad warns and falls back."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kasmina.annotations as annotations_module
from kasmina.annotations import BLEND_KEYS, MAX_VALUE_CHARS, parse_blend_annotations
from kasmina.kernels import BlenderConfig, BlendMode

CONVEX = BlenderConfig(mode=BlendMode.CONVEX)


def _check_warning_shape(w: dict[str, str]) -> None:
    assert set(w) == {"key", "value", "message", "level"}
    assert w["level"] == "WARNING"
    assert all(isinstance(v, str) for v in w.values())
    assert len(w["value"]) <= 200
    assert w["message"] and "\n" not in w["message"] and "\r" not in w["message"]


# --------------------------------------------------------------------------- absent


@pytest.mark.parametrize("annotations", [
    {}, {"signature": "abc"}, {"gate_k": "oops", "alpha_vec": "x"},  # no blend_mode: nothing parsed
    {"blend_mode": ""}, {"blend_mode": "   "},
])
def test_absent_blend_mode_means_no_per_seed_config(annotations: dict[str, str]) -> None:
    assert parse_blend_annotations(annotations) == (None, [])


# --------------------------------------------------------------------------- valid

VALID: list[tuple[dict[str, str], BlenderConfig]] = [
    ({"blend_mode": "CONVEX"}, BlenderConfig()),
    ({"blend_mode": "residual"}, BlenderConfig(mode="RESIDUAL")),
    ({"blend_mode": " Confidence "}, BlenderConfig(mode="CONFIDENCE")),
    ({"blend_mode": "CONFIDENCE", "gate_k": "2.5", "gate_tau": "0"},
     BlenderConfig(mode="CONFIDENCE", gate_k=2.5, gate_tau=0.0)),
    ({"blend_mode": "CONFIDENCE", "gate_k": " 1e1 ", "gate_tau": "1"},
     BlenderConfig(mode="CONFIDENCE", gate_k=10.0, gate_tau=1.0)),
    ({"blend_mode": "CONFIDENCE", "alpha_lo": "0.2", "alpha_hi": "0.8"},
     BlenderConfig(mode="CONFIDENCE", alpha_lo=0.2, alpha_hi=0.8)),
    ({"blend_mode": "CONFIDENCE", "alpha_lo": "0.9", "alpha_hi": "0.1"},        # swapped
     BlenderConfig(mode="CONFIDENCE", alpha_lo=0.1, alpha_hi=0.9)),
    ({"blend_mode": "CONFIDENCE", "alpha_lo": "-3", "alpha_hi": "7"},           # clamped
     BlenderConfig(mode="CONFIDENCE", alpha_lo=0.0, alpha_hi=1.0)),
    ({"blend_mode": "CONFIDENCE", "alpha_lo": "0.4"},
     BlenderConfig(mode="CONFIDENCE", alpha_lo=0.4, alpha_hi=1.0)),
    ({"blend_mode": "CHANNEL", "alpha_vec": "[0.5, 1.0, 0.25]"},
     BlenderConfig(mode="CHANNEL", alpha_vec=(0.5, 1.0, 0.25))),
    ({"blend_mode": "channel", "alpha_vec": "0.5, 1.0"},                         # CSV
     BlenderConfig(mode="CHANNEL", alpha_vec=(0.5, 1.0))),
    ({"blend_mode": "CHANNEL", "alpha_vec": "[0.5,1.0"},                         # stray bracket
     BlenderConfig(mode="CHANNEL", alpha_vec=(0.5, 1.0))),
    ({"blend_mode": "CHANNEL", "alpha_vec": "0.5,1.0]"},
     BlenderConfig(mode="CHANNEL", alpha_vec=(0.5, 1.0))),
    ({"blend_mode": "CHANNEL", "alpha_vec": "[-1, 2, 0.5]"},                     # clamped
     BlenderConfig(mode="CHANNEL", alpha_vec=(0.0, 1.0, 0.5))),
    ({"blend_mode": "CHANNEL", "alpha_vec": "0.3"}, BlenderConfig(mode="CHANNEL", alpha_vec=(0.3,))),
    ({"blend_mode": "CHANNEL", "alpha_vec": "[0, 1]", "alpha_vec_len": "2"},
     BlenderConfig(mode="CHANNEL", alpha_vec=(0.0, 1.0))),
    ({"blend_mode": "CHANNEL", "alpha_vec": "[" + ",".join(["0.0"] * 64) + "]", "alpha_vec_len": "64"},
     BlenderConfig(mode="CHANNEL", alpha_vec=(0.0,) * 64)),          # Tamiyo's placeholder vector
    ({"blend_mode": "RESIDUAL", "blend_mode_source": "override"}, BlenderConfig(mode="RESIDUAL", source="override")),
    ({"blend_mode": "CONVEX", "blend_mode_source": "heuristic", "signature": "x", "policy_version": "7"},
     BlenderConfig(source="heuristic")),
    ({"blend_mode": "CONFIDENCE", "gate_k": "1.0", "gate_tau": "1.0", "alpha_lo": "0.0",
      "alpha_hi": "1.0", "blend_mode_source": "override"},                   # Tamiyo's defaults
     BlenderConfig(mode="CONFIDENCE", gate_k=1.0, gate_tau=1.0, source="override")),
]


@pytest.mark.parametrize("annotations, expected", VALID)
def test_valid_annotations(annotations: dict[str, str], expected: BlenderConfig) -> None:
    config, warnings = parse_blend_annotations(annotations)
    assert warnings == []
    assert config == expected
    assert config is not None and config.to_dict() == expected.to_dict()


# --------------------------------------------------------------------------- invalid

INVALID: list[tuple[dict[str, str], list[str]]] = [
    ({"blend_mode": "LERP"}, ["blend_mode"]),
    ({"blend_mode": "CONVEX2"}, ["blend_mode"]),
    ({"blend_mode": "CONFIDENCE", "gate_k": "abc"}, ["gate_k"]),
    ({"blend_mode": "CONFIDENCE", "gate_k": "-1"}, ["gate_k"]),
    ({"blend_mode": "CONFIDENCE", "gate_k": "nan"}, ["gate_k"]),
    ({"blend_mode": "CONFIDENCE", "gate_k": "inf"}, ["gate_k"]),
    ({"blend_mode": "CONFIDENCE", "gate_k": ""}, ["gate_k"]),
    ({"blend_mode": "CONFIDENCE", "gate_tau": "-0.5"}, ["gate_tau"]),
    ({"blend_mode": "CONFIDENCE", "gate_tau": "1e999"}, ["gate_tau"]),
    ({"blend_mode": "CONFIDENCE", "alpha_lo": "low"}, ["alpha_lo"]),
    ({"blend_mode": "CONFIDENCE", "alpha_hi": "NaN"}, ["alpha_hi"]),
    ({"blend_mode": "CHANNEL"}, ["alpha_vec"]),                                   # CHANNEL needs a vector
    ({"blend_mode": "CHANNEL", "alpha_vec": ""}, ["alpha_vec"]),
    ({"blend_mode": "CHANNEL", "alpha_vec": "[]"}, ["alpha_vec"]),
    ({"blend_mode": "CHANNEL", "alpha_vec": "0.5,,1"}, ["alpha_vec"]),
    ({"blend_mode": "CHANNEL", "alpha_vec": "[0.5, \"x\"]"}, ["alpha_vec"]),
    ({"blend_mode": "CHANNEL", "alpha_vec": "[0.5, true]"}, ["alpha_vec"]),
    ({"blend_mode": "CHANNEL", "alpha_vec": "[[0.5, 1.0]]"}, ["alpha_vec"]),
    ({"blend_mode": "CHANNEL", "alpha_vec": "[0.5, NaN]"}, ["alpha_vec"]),
    ({"blend_mode": "CHANNEL", "alpha_vec": "[1e400]"}, ["alpha_vec"]),
    ({"blend_mode": "CHANNEL", "alpha_vec": "{\"a\": 1}"}, ["alpha_vec"]),
    ({"blend_mode": "RESIDUAL", "alpha_vec": "zero"}, ["alpha_vec"]),              # validated in any mode
    ({"blend_mode": "RESIDUAL", "gate_k": "x", "alpha_lo": "y"}, ["gate_k", "alpha_lo"]),
    ({"blend_mode": "NOPE", "gate_tau": "-1", "alpha_vec": "[", "alpha_hi": "?"},
     ["blend_mode", "gate_tau", "alpha_vec", "alpha_hi"]),
    ({"blend_mode": "CONVEX", "blend_mode_source": "s" * (MAX_VALUE_CHARS + 1)}, ["blend_mode_source"]),
    ({"blend_mode": "CHANNEL", "alpha_vec": "0," * 3000}, ["alpha_vec"]),            # > 4096 chars
]


@pytest.mark.parametrize("annotations, bad_keys", INVALID)
def test_invalid_annotations_fall_back_to_convex_with_one_warning_per_bad_key(
        annotations: dict[str, str], bad_keys: list[str]) -> None:
    config, warnings = parse_blend_annotations(annotations)
    source = annotations.get("blend_mode_source")
    expected_source = source if source is not None and len(source) <= MAX_VALUE_CHARS else None
    assert config == BlenderConfig(mode=BlendMode.CONVEX, source=expected_source)
    assert sorted(w["key"] for w in warnings) == sorted(bad_keys)
    for w in warnings:
        _check_warning_shape(w)
        assert w["value"] == annotations.get(w["key"], "")[:200]
        assert w["key"] in w["message"] or "CHANNEL" in w["message"] or "characters" in w["message"]


def test_invalid_value_keeps_the_source() -> None:
    config, warnings = parse_blend_annotations({"blend_mode": "bogus", "blend_mode_source": "override"})
    assert config == BlenderConfig(source="override")
    assert [w["key"] for w in warnings] == ["blend_mode"]
    assert "allowed: CONVEX, RESIDUAL, CHANNEL, CONFIDENCE" in warnings[0]["message"]


def test_long_values_are_truncated_in_the_warning_and_messages_are_one_line() -> None:
    value = "bad\nmode " * 100
    config, warnings = parse_blend_annotations({"blend_mode": value})
    assert config == CONVEX
    assert warnings[0]["value"] == value[:200]
    _check_warning_shape(warnings[0])


def test_alpha_vec_len_disagreement_warns_but_keeps_the_parsed_vector() -> None:
    config, warnings = parse_blend_annotations({"blend_mode": "CHANNEL", "alpha_vec": "[0.5, 1]",
                                                "alpha_vec_len": "3"})
    assert config == BlenderConfig(mode="CHANNEL", alpha_vec=(0.5, 1.0))
    assert [(w["key"], w["value"]) for w in warnings] == [("alpha_vec_len", "3")]
    assert "3" in warnings[0]["message"] and "2" in warnings[0]["message"]
    config, warnings = parse_blend_annotations({"blend_mode": "CHANNEL", "alpha_vec": "[0.5]",
                                                "alpha_vec_len": "one"})
    assert config == BlenderConfig(mode="CHANNEL", alpha_vec=(0.5,))
    assert [w["key"] for w in warnings] == ["alpha_vec_len"]


def test_alpha_vec_entry_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # The 4096-character cap hides the entry cap; lift it to reach the entry check.
    monkeypatch.setattr(annotations_module, "MAX_VALUE_CHARS", 10**7)
    ok = ",".join(["1"] * annotations_module.MAX_ALPHA_VEC_LEN)
    config, warnings = parse_blend_annotations({"blend_mode": "CHANNEL", "alpha_vec": ok})
    assert warnings == [] and config is not None and len(config.alpha_vec or ()) == 65536
    too_long = ok + ",1"
    config, warnings = parse_blend_annotations({"blend_mode": "CHANNEL", "alpha_vec": too_long})
    assert config == CONVEX and [w["key"] for w in warnings] == ["alpha_vec"]
    assert "65536" in warnings[0]["message"]


def test_value_at_the_character_limit_is_accepted() -> None:
    src = "s" * MAX_VALUE_CHARS
    config, warnings = parse_blend_annotations({"blend_mode": "CONVEX", "blend_mode_source": src})
    assert warnings == [] and config == BlenderConfig(source=src)


def test_non_string_values_from_careless_callers_do_not_raise() -> None:
    config, warnings = parse_blend_annotations({"blend_mode": "CONFIDENCE", "gate_k": 2.0,  # type: ignore[dict-item]
                                                "alpha_lo": None})  # type: ignore[dict-item]
    assert config == CONVEX and [w["key"] for w in warnings] == ["alpha_lo"]


def test_parsed_config_round_trips_through_the_event_payload() -> None:
    config, _ = parse_blend_annotations({"blend_mode": "CHANNEL", "alpha_vec": "[0.1, 0.2]",
                                         "blend_mode_source": "override"})
    assert config is not None
    payload = config.to_dict()
    assert payload["mode"] == "CHANNEL" and payload["source"] == "override" and payload["alpha_vec_len"] == 2
    assert BlenderConfig.from_dict(payload) == config


# --------------------------------------------------------------------------- never raises

_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.integers(-10**6, 10**6).map(str), st.sampled_from(["nan", "-inf", "1e999", "0x10", "1_0"]))
_vectors = st.one_of(
    st.lists(st.one_of(st.floats(), st.integers(), st.text(max_size=3), st.booleans(), st.none()), max_size=8).map(repr),
    st.lists(st.floats(-2, 2), min_size=1, max_size=8).map(lambda v: ", ".join(map(str, v))),
    st.lists(st.floats(-2, 2), min_size=1, max_size=8).map(lambda v: "[" + ",".join(map(str, v))),
    st.text(alphabet="[]{},.0123456789-eE \"nultrfaNI", max_size=40),
)
_modes = st.one_of(st.sampled_from(["CONVEX", "residual", "Channel", "CONFIDENCE", "", " ", "x"]), st.text(max_size=12))
_value = st.one_of(st.text(max_size=60), _numbers, _vectors)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional={
    "blend_mode": _modes, "blend_mode_source": st.text(max_size=20), "gate_k": _value, "gate_tau": _value,
    "alpha_lo": _value, "alpha_hi": _value, "alpha_vec": _value, "alpha_vec_len": _value,
}), st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4))
def test_parser_never_raises_and_always_returns_a_valid_config(known: dict[str, str], extra: dict[str, str]) -> None:
    annotations = {**extra, **known}
    config, warnings = parse_blend_annotations(annotations)
    assert isinstance(warnings, list)
    for w in warnings:
        _check_warning_shape(w)
        assert w["key"] in BLEND_KEYS
    if not annotations.get("blend_mode", "").strip():
        assert (config, warnings) == (None, [])
        return
    assert isinstance(config, BlenderConfig) and isinstance(config.mode, BlendMode)
    assert 0.0 <= config.alpha_lo <= config.alpha_hi <= 1.0
    assert math.isfinite(config.gate_k) and config.gate_k >= 0.0
    assert math.isfinite(config.gate_tau) and config.gate_tau >= 0.0
    assert config.alpha_vec is None or all(0.0 <= v <= 1.0 for v in config.alpha_vec)
    if config.mode is BlendMode.CHANNEL:
        assert config.alpha_vec
    if any(w["key"] != "alpha_vec_len" for w in warnings):
        assert config.mode is BlendMode.CONVEX and config.alpha_vec is None
    assert BlenderConfig.from_dict(config.to_dict()) == config


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(BLEND_KEYS), st.text(), max_size=8))
def test_parser_never_raises_on_arbitrary_text(annotations: dict[str, Any]) -> None:
    config, warnings = parse_blend_annotations(annotations)
    assert config is None or isinstance(config, BlenderConfig)
    assert all(w["level"] == "WARNING" for w in warnings)

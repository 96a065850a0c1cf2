"""Blend-mode annotations (SPEC §5, WP-K7): from a GERMINATE command's strings to a config.

The controller (Tamiyo's role) may choose a seed's blend mode through command annotations:

* ``blend_mode``: CONVEX | RESIDUAL | CHANNEL | CONFIDENCE, any case. Absent or blank: no
  per-seed config at all (the default convex blend), and no warning.
* ``blend_mode_source``: provenance, copied to the config (so to the ``blend_config`` event).
* ``gate_k``, ``gate_tau``: finite numbers >= 0, defaults 4.0 / 0.2 (CONFIDENCE).
* ``alpha_lo``, ``alpha_hi``: finite numbers, clamped to [0, 1], swapped if inverted.
* ``alpha_vec``: a JSON list of numbers, or CSV ("0.5, 1.0", stray brackets at the ends
  tolerated); elements clamped to [0, 1]; required for CHANNEL.
* ``alpha_vec_len``: the sender's idea of the length; a disagreement (or a non-integer) is a
  warning only, since the parsed vector is what is used.
* ``host_gradient``: ``blend`` (default: the host keeps its share of the task gradient while
  the seed blends in) or ``detached`` (the host learns nothing upstream of the site until the
  seed is fossilized). It may come without ``blend_mode`` (the mode is then the default).

Every known key that is present is validated whatever the mode. Any invalid value makes the
whole config fall back to CONVEX (keeping a valid ``blend_mode_source``) with one warning
per bad key. The prototype fell back silently and its JSON path never ran; here every
fallback is reported, and no string input can make the parser raise.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from kasmina.kernels.blend import HOST_GRADIENTS, BlenderConfig, BlendMode

__all__ = ["parse_blend_annotations", "BLEND_KEYS", "MAX_VALUE_CHARS", "MAX_ALPHA_VEC_LEN"]

BLEND_KEYS = ("blend_mode", "blend_mode_source", "gate_k", "gate_tau", "alpha_lo", "alpha_hi",
              "alpha_vec", "alpha_vec_len", "host_gradient")
#: Longest annotation value accepted (longer values are refused, not truncated).
MAX_VALUE_CHARS = 4096
#: Most alpha_vec entries accepted. With the character cap above this cannot be reached from a
#: single annotation today; it still guards the parser if the cap is ever raised.
MAX_ALPHA_VEC_LEN = 65536
_SHOWN_CHARS = 200


class _Invalid(ValueError):
    """One bad annotation value; the message is the one-line reason."""


def _warning(key: str, value: str, message: str) -> dict[str, str]:
    return {"key": key, "value": value[:_SHOWN_CHARS], "message": " ".join(message.split()),
            "level": "WARNING"}


def _text(value: Any) -> str:
    """The annotation as a string; protobuf maps only hold strings, callers may not."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:  # a hostile __str__ must not make parsing raise
        return "<unprintable>"


def _number(text: str, *, non_negative: bool = False) -> float:
    try:
        value = float(text.strip())
    except (ValueError, OverflowError):
        raise _Invalid("not a number") from None
    if not math.isfinite(value):
        raise _Invalid("not a finite number")
    if non_negative and value < 0.0:
        raise _Invalid("must be >= 0")
    return value


def _element(item: Any) -> float:
    if isinstance(item, bool) or not isinstance(item, (int, float, str)):
        raise _Invalid("alpha_vec elements must be numbers")
    try:
        value = float(item.strip()) if isinstance(item, str) else float(item)
    except (ValueError, OverflowError):
        raise _Invalid("alpha_vec element is not a number") from None
    if not math.isfinite(value):
        raise _Invalid("alpha_vec element is not a finite number")
    return min(1.0, max(0.0, value))


def _alpha_vec(text: str) -> tuple[float, ...]:
    """A JSON list, else comma-separated numbers with any brackets at the ends stripped."""
    items: list[Any] | None = None
    try:
        decoded = json.loads(text)
    except (ValueError, RecursionError):
        decoded = None
    if isinstance(decoded, list):
        items = decoded
    else:
        body = text.strip().strip("[]").strip()
        items = [] if not body else body.split(",")
    if not items:
        raise _Invalid("alpha_vec is empty")
    if len(items) > MAX_ALPHA_VEC_LEN:
        raise _Invalid(f"alpha_vec has more than {MAX_ALPHA_VEC_LEN} entries")
    return tuple(_element(item) for item in items)


def parse_blend_annotations(annotations: Mapping[str, str], *, default_mode: str = "CONVEX",
                            ) -> tuple[BlenderConfig | None, list[dict[str, str]]]:
    """``(config, warnings)``: ``(None, [])`` without ``blend_mode`` or ``host_gradient``; never
    raises on string input. ``default_mode`` is the mode when only ``host_gradient`` is given.

    Each warning is ``{"key", "value" (first 200 chars), "message" (one line), "level": "WARNING"}``.
    """
    try:
        raw = {key: _text(annotations[key]) for key in BLEND_KEYS if key in annotations}
    except Exception as exc:  # a broken Mapping: report it, do not crash the command path
        return BlenderConfig(mode=BlendMode.CONVEX), [_warning("blend_mode", "", f"annotations unreadable: {exc!r}")]
    if not raw.get("blend_mode", "").strip():
        if not raw.get("host_gradient", "").strip():
            return None, []
        raw["blend_mode"] = default_mode

    warnings: list[dict[str, str]] = []
    values: dict[str, Any] = {}

    def bad(key: str, reason: str) -> None:
        warnings.append(_warning(key, raw.get(key, ""), reason))

    for key, text in raw.items():
        if len(text) > MAX_VALUE_CHARS:
            bad(key, f"value is {len(text)} characters long; the limit is {MAX_VALUE_CHARS}")
            continue
        try:
            if key == "blend_mode":
                try:
                    values[key] = BlendMode.parse(text)
                except ValueError:
                    raise _Invalid(f"unknown blend mode; allowed: {', '.join(BlendMode.__members__)}") from None
            elif key == "blend_mode_source":
                values[key] = text.strip() or None
            elif key in ("gate_k", "gate_tau"):
                values[key] = _number(text, non_negative=True)
            elif key in ("alpha_lo", "alpha_hi"):
                values[key] = min(1.0, max(0.0, _number(text)))
            elif key == "alpha_vec":
                values[key] = _alpha_vec(text)
            elif key == "host_gradient":
                choice = text.strip().lower()
                if choice not in HOST_GRADIENTS:
                    raise _Invalid(f"host_gradient must be one of {', '.join(HOST_GRADIENTS)}")
                values[key] = choice
        except _Invalid as exc:
            bad(key, f"{key}: {exc}")

    mode = values.get("blend_mode")
    if mode is BlendMode.CHANNEL and "alpha_vec" not in raw:
        bad("alpha_vec", "CHANNEL blend needs alpha_vec (a JSON list or comma-separated numbers)")

    vec = values.get("alpha_vec")
    if "alpha_vec_len" in raw:
        declared = raw["alpha_vec_len"]
        try:
            n = int(declared.strip()) if len(declared) <= MAX_VALUE_CHARS else None
        except ValueError:
            n = None
        if n is None or n < 0:
            warnings.append(_warning("alpha_vec_len", declared, "alpha_vec_len is not a non-negative integer; ignored"))
        elif vec is not None and n != len(vec):
            warnings.append(_warning("alpha_vec_len", declared,
                                     f"alpha_vec_len says {n} but alpha_vec has {len(vec)} entries; using the parsed vector"))

    source = values.get("blend_mode_source")
    if any(w["key"] != "alpha_vec_len" for w in warnings):
        return BlenderConfig(mode=BlendMode.CONVEX, source=source), warnings

    lo = values.get("alpha_lo", 0.0)
    hi = values.get("alpha_hi", 1.0)
    try:
        config = BlenderConfig(mode=mode, alpha_vec=vec, gate_k=values.get("gate_k", 4.0),
                               gate_tau=values.get("gate_tau", 0.2), alpha_lo=min(lo, hi),
                               alpha_hi=max(lo, hi), source=source,
                               host_gradient=values.get("host_gradient", "blend"))
    except ValueError as exc:  # defensive: everything above should already have been checked
        warnings.append(_warning("blend_mode", raw.get("blend_mode", ""), f"invalid blend config: {exc}"))
        return BlenderConfig(mode=BlendMode.CONVEX, source=source), warnings
    return config, warnings

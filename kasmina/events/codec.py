"""Decoding stored payloads: msgspec's JSON decoder instead of :func:`json.loads`.

Replay is mostly decoding: msgspec's decoder builds the same Python objects (arbitrary
ints kept whole, floats correctly rounded, the same strings) about three times faster.
orjson would be as fast but refuses integers beyond 64 bits, which a payload may hold.
Encoding stays :func:`kasmina.lifecycle.state.canonical_json`: the hashes are over its text.
"""

from __future__ import annotations

from typing import Any, Callable

import msgspec

#: ``loads(text_or_bytes)``: one JSON document to Python objects, as :func:`json.loads` gives;
#: a bad document raises ``msgspec.DecodeError``, a ValueError as json's own error is.
loads: Callable[[str | bytes], Any] = msgspec.json.Decoder().decode

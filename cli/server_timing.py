"""W3C Server-Timing, read generically: whatever steps the answers name (the edge's
decision and lookup on a hit, the origin adapter's steps on a miss, steps added later).
Read by the local run's live dashboard and by bin/smoke."""

from __future__ import annotations

import re

_TIMING_ENTRY = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)((?:\s*;\s*[^;,"]+(?:="[^"]*"|=[^;,]*)?)*)\s*(?:,|$)')
_DUR = re.compile(r';\s*dur\s*=\s*"?([0-9.eE+-]+)"?')


def parse_server_timing(value: str) -> list[tuple[str, float | None]]:
    """W3C Server-Timing: `name;dur=12.3;desc="...", name2;dur=4` -> [(name, ms)], any names."""
    out = []
    position = 0
    value = value.strip()
    while position < len(value):
        match = _TIMING_ENTRY.match(value, position)
        if not match or match.end() == position:
            break
        name, params = match.group(1), match.group(2)
        dur = _DUR.search(params)
        try:
            out.append((name, float(dur.group(1)) if dur else None))
        except ValueError:
            out.append((name, None))
        position = match.end()
    return out

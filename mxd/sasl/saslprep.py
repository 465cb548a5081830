"""SASLprep (RFC 4013), the stringprep profile for user names and passwords."""

from __future__ import annotations

import stringprep
import unicodedata


def saslprep(s: str, *, allow_unassigned: bool = False) -> str:
    """Return ``s`` prepared per RFC 4013 §2; raise ValueError when it is prohibited."""
    if s.isascii() and all(0x20 <= ord(c) < 0x7F for c in s):
        return s  # fast path: printable ASCII maps to itself
    # RFC 4013 §2.1 mapping: non-ASCII space to SPACE, "commonly mapped to nothing" removed.
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in s if not stringprep.in_table_b1(c)
    )
    # §2.2 normalisation: NFKC as of Unicode 3.2, the version stringprep is defined
    # against (RFC 3454 §4); later versions' corrections must not change stored names.
    out = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if not out:
        return out
    for c in out:
        # §2.3 prohibited output.
        if (stringprep.in_table_c12(c) or stringprep.in_table_c21_c22(c) or stringprep.in_table_c3(c)
                or stringprep.in_table_c4(c) or stringprep.in_table_c5(c) or stringprep.in_table_c6(c)
                or stringprep.in_table_c7(c) or stringprep.in_table_c8(c) or stringprep.in_table_c9(c)):
            raise ValueError("SASLprep: prohibited character")
        if not allow_unassigned and stringprep.in_table_a1(c):
            raise ValueError("SASLprep: unassigned code point")
    # §2.4 bidirectional characters (RFC 3454 §6).
    has_ral = any(stringprep.in_table_d1(c) for c in out)
    if has_ral:
        if any(stringprep.in_table_d2(c) for c in out):
            raise ValueError("SASLprep: mixed bidirectional text")
        if not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1])):
            raise ValueError("SASLprep: RandALCat text must start and end with RandALCat")
    return out

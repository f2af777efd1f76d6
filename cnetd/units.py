"""Sizes for people, in one convention: the unit names mean what the parser takes them to mean.

Limits parse "MB" as 10^6 and "MiB" (or a bare "M") as 2^20 (cnetd.config.parse_size), so a
size is shown in the family it was evidently written in: a whole number of decimal units,
up to three decimals, in decimal ("1 GB", "1.5 GB", "512 MB"), a whole number of binary
units in IEC ("512 MiB", "1.5 GiB"); where both fit, the shorter. A measured size that fits
neither (1288490188 bytes) is shown with three significant digits in the family of what it
is compared with (``like=``: the limit it passed), else in decimal. Every text this returns
parses back with parse_size to the same bytes when it is exact.
"""

from __future__ import annotations

from typing import Literal

Family = Literal["decimal", "binary"]

UNITS: dict[Family, tuple[tuple[str, int], ...]] = {
    "decimal": (("B", 1), ("kB", 10**3), ("MB", 10**6), ("GB", 10**9), ("TB", 10**12), ("PB", 10**15)),
    "binary": (("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40), ("PiB", 1 << 50)),
}
EXACT_DECIMALS = 3


def _unit_for(n: int, family: Family) -> tuple[str, int]:
    """The largest unit of the family that n (> 0) is at least one of."""
    chosen = UNITS[family][0]
    for unit in UNITS[family]:
        if unit[1] <= n:
            chosen = unit
    return chosen


def _exact_text(n: int, family: Family) -> str | None:
    """n in the family's largest fitting unit with at most three decimals, when that is exact."""
    name, size = _unit_for(n, family)
    scaled = n * 10**EXACT_DECIMALS
    if scaled % size:
        return None
    thousandths = scaled // size
    whole, fraction = divmod(thousandths, 10**EXACT_DECIMALS)
    digits = f"{fraction:0{EXACT_DECIMALS}d}".rstrip("0")
    return f"{whole}.{digits} {name}" if digits else f"{whole} {name}"


def _rounded_text(n: float, family: Family) -> str:
    """Three significant digits in the family's largest fitting unit."""
    units = UNITS[family]
    index = max(i for i, (_, size) in enumerate(units) if size <= max(n, 1))
    name, size = units[index]
    value = n / size
    if name == "B":
        return f"{round(value)} B"
    if round(value) >= 1000 and index + 1 < len(units):  # 999.7 MB reads better as 1.00 GB
        name, size = units[index + 1]
        value = n / size
    decimals = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{decimals}f} {name}"


def family_of(n: int | float) -> Family:
    """The family n evidently was written in (decimal when it is neither or both)."""
    if (isinstance(n, float) and not n.is_integer()) or n <= 0:
        return "decimal"
    decimal, binary = _exact_text(int(n), "decimal"), _exact_text(int(n), "binary")
    if binary is not None and (decimal is None or len(binary) < len(decimal)):
        return "binary"
    return "decimal"


def format_size(n: int | float, like: int | float | None = None) -> str:
    """Bytes for people: 10**9 -> "1 GB", 2**29 -> "512 MiB", 1288490188 -> "1.29 GB";
    like: show n in the family of that size (a usage next to its limit)."""
    if n < 0:
        return "-" + format_size(-n, like)
    if n == 0:
        return "0 B"
    family = family_of(like) if like else family_of(n)
    if isinstance(n, int) or n.is_integer():
        exact = _exact_text(int(n), family)
        if exact is not None:
            return exact
    return _rounded_text(float(n), family)

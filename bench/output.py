"""Writing a benchmark's results: ``NAME.csv``, ``NAME.json`` (with the machine facts) and,
when matplotlib is installed, ``NAME.png`` drawn by the benchmark's own plot function."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend, or None (said on stderr) when
    matplotlib is not installed (it is the ``bench`` extra)."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    return plt


def save(
    name: str,
    results: Sequence[Any],
    info: Mapping[str, object],
    out: Path,
    plot: Callable[[Path], Path | None],
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.csv", out / f"{name}.json"]
    with open(written[0], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(results[0])])
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    payload = {"machine": dict(info), "results": [asdict(r) for r in results]}
    written[1].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    png = plot(out / f"{name}.png")
    return [*written, *([png] if png else [])]

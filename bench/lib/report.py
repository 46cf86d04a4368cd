"""Writing benchmark figures into bench/RESULTS.md: number formats, verdicts and marked sections."""

from __future__ import annotations

from pathlib import Path

# bench/run.py's section; other scripts pass their own markers.
BEGIN_MARKER = "<!-- run.py:begin -->"
END_MARKER = "<!-- run.py:end -->"

# A new RESULTS.md: a section per benchmark script, placeholders for those not run yet.
RESULTS_TEMPLATE = f"""# Benchmark results

Each section says which script writes it; see bench/README.md for how to run them. Figures depend
on the machine and on what else runs on it: compare rows from the same run only.

## Serving: throughput and latency (bench/run.py)

{BEGIN_MARKER}
_Not run yet: `python bench/run.py`._
{END_MARKER}

## Codec (bench/bench_codec.py)

_Placeholder: decode/encode throughput of the Cython codec vs. its numpy twin._

## Processing kernels (bench/bench_processing.py)

_Placeholder._

## Metrics overhead (bench/bench_metrics_overhead.py)

_Placeholder: throughput and latency with and without metrics._

## Overload (bench/overload.py)

_Placeholder: behaviour past saturation (503 / UNAVAILABLE, queue bound, latency of admitted requests)._

## Hot-swap under load

_Placeholder: errors and latency while a model version is replaced under load._
"""


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**MISS**")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def difference(minuend: float | None, subtrahend: float | None) -> float | None:
    if minuend is None or subtrahend is None:
        return None
    return minuend - subtrahend


def write_section(
    out: Path,
    section: str,
    begin_marker: str = BEGIN_MARKER,
    end_marker: str = END_MARKER,
    heading: str = "Serving: throughput and latency (bench/run.py)",
) -> None:
    """Replace what lies between the markers in `out`; add a section with them at the end if absent."""
    text = out.read_text() if out.exists() else RESULTS_TEMPLATE
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin < 0 or end < begin:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{begin_marker}\n{end_marker}\n"
        begin, end = text.find(begin_marker), text.find(end_marker)
    text = text[: begin + len(begin_marker)] + "\n" + section.rstrip("\n") + "\n" + text[end:]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)

"""The PNG: latency percentiles per concurrency, one panel per path, one colour per target."""

from __future__ import annotations

from pathlib import Path

from gateway.bench.model import Results

_STYLES = {"p50": ("-", "o"), "p90": ("--", "s"), "p99": (":", "^")}
_COLOURS = {
    "direct": "tab:gray",
    "passthrough": "tab:blue",
    "gateway": "tab:red",
    "gateway+otel": "tab:purple",
}


def plot(results: Results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; a file only
    import matplotlib.pyplot as plt

    runs = [run for run in results.runs if not run.stream]
    paths = sorted({run.path for run in runs}, reverse=True)
    figure, axes = plt.subplots(1, max(1, len(paths)), figsize=(6 * max(1, len(paths)), 4.5))
    panels = axes if len(paths) > 1 else [axes]
    for axis, path in zip(panels, paths, strict=False):
        for target in _COLOURS:
            mine = sorted(
                (r for r in runs if r.path == path and r.target == target),
                key=lambda r: r.concurrency,
            )
            if not mine:
                continue
            levels = [r.concurrency for r in mine]
            for name, (style, marker) in _STYLES.items():
                values = [getattr(r.load.latency, name) for r in mine]
                axis.plot(
                    levels,
                    values,
                    style,
                    marker=marker,
                    color=_COLOURS[target],
                    label=f"{target} {name}",
                )
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        levels = sorted({r.concurrency for r in runs})
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.set_xlabel("concurrency")
        axis.set_ylabel("latency (ms)")
        axis.set_title(f"{path} (whole answers)")
        axis.grid(True, which="both", alpha=0.3)
    panels[0].legend(fontsize="x-small", ncol=2)
    m = results.machine
    figure.suptitle(
        f"gateway bench {results.started_at}: {m.cpu_model}, {m.cores} cores, {m.generator}",
        fontsize="small",
    )
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)

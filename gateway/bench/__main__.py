"""`python -m gateway.bench`: run the benchmark and write its JSON, markdown and PNG."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType

import msgspec

from gateway.bench.model import Settings
from gateway.bench.procs import BenchError, say
from gateway.bench.report import PLOT, markdown, targets, update_docs
from gateway.bench.run import Options, run

DEFAULT_DOC = Path(__file__).resolve().parents[2] / "docs" / "PERFORMANCE.md"


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError("concurrencies must be 1 or more")
    return levels


def parse(argv: list[str]) -> tuple[Options, Path, Path | None]:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="What the gateway adds to each request, on loopback, against the simulator.",
    )
    parser.add_argument("--quick", action="store_true", help="short loads: done in under 2 min")
    parser.add_argument("--duration", type=float, help="seconds per load (8; quick: 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per load; medians reported")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per server")
    parser.add_argument("--concurrency", type=_levels, default=(1, 8, 32), help="e.g. 1,8,32")
    parser.add_argument("--stream-concurrency", type=_levels, help="streams: 1,8 (quick: 1)")
    parser.add_argument("--chunks", type=int, default=16, help="tokens per simulated answer")
    parser.add_argument(
        "--idle-streams", type=int, help="slow streams: 2000 (quick: 1000; 0 skips)"
    )
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "bundled"),
        default="auto",
        help="auto: wrk when installed (or installable), else the bundled one",
    )
    parser.add_argument("--no-install-wrk", action="store_true", help="never apt-get wrk")
    parser.add_argument("--no-telemetry", action="store_true", help="skip the telemetry run")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    parser.add_argument(
        "--update-docs",
        nargs="?",
        type=Path,
        const=DEFAULT_DOC,
        help="also rewrite the results section of docs/PERFORMANCE.md (or the file given)",
    )
    args = parser.parse_args(argv)
    idle = args.idle_streams if args.idle_streams is not None else (1000 if args.quick else 2000)
    if args.repeat < 1 or args.workers < 1 or args.chunks < 1 or idle < 0:
        parser.error("--repeat, --workers and --chunks must be 1 or more, --idle-streams 0 or more")
    quick = bool(args.quick)
    settings = Settings(
        quick=quick,
        duration_s=args.duration or (2.0 if quick else 8.0),
        repeat=args.repeat,
        workers=args.workers,
        concurrencies=args.concurrency,
        stream_concurrencies=args.stream_concurrency or ((1,) if quick else (1, 8)),
        chunks=args.chunks,
        idle_streams=idle,
    )
    options = Options(
        settings=settings,
        generator=args.generator,
        install_wrk=not args.no_install_wrk,
        telemetry=not args.no_telemetry,
        warmup_s=0.5 if quick else 2.0,
        hold_s=30.0 if quick else 60.0,
        logs=args.out / "logs",
    )
    return options, args.out, args.update_docs


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # Once: a second Ctrl-C must not cut short the clean-up the first one started.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    options, out, doc = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run(options)
    except BenchError as exc:
        say(str(exc), error=True)
        return 1
    except KeyboardInterrupt:
        say("interrupted; everything it started is stopped", error=True)
        return 130
    results.targets = targets(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-results.json").write_bytes(msgspec.json.format(msgspec.json.encode(results)))
    table = markdown(results)
    (out / "bench-results.md").write_text(table)
    from gateway.bench.plot import plot

    plot(results, out / PLOT)
    if doc is not None:
        update_docs(doc, table)
        shutil.copyfile(out / PLOT, doc.parent / PLOT)
        say(f"updated {doc} and its {PLOT}")
    print(table)
    say(f"wrote {out}/bench-results.json, bench-results.md, {PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

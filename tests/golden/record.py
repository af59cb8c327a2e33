"""Record ``tests/golden/golden.json``: the final metrics of every golden run.

Usage (from the repository root)::

    .venv/bin/python -m tests.golden.record            # every run, each twice
    .venv/bin/python -m tests.golden.record --only NAME [--only NAME ...]

Each run is run twice in this process (a run in ``RESUMED`` once straight through and
once interrupted after its checkpoint and resumed) and the file is written only if both
give the same numbers, bit for bit (``runs.NONDETERMINISTIC`` keys aside); ``--repeat 1``
runs each once (then replay the test before committing the file: that is the second
run). ``--only`` re-records the named runs and keeps the other entries of an existing
file (the recorded versions must then be the installed ones). Exit status 1 if any run
was not reproducible.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python tests/golden/record.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.golden.replay import GOLDEN, differences, run, to_record, versions  # noqa: E402
from tests.golden.runs import RESUMED, RUNS  # noqa: E402

logger = logging.getLogger("tests.golden.record")


def record(names: list[str], workdir: Path,
           repeat: int = 2) -> tuple[dict[str, dict], list[str]]:
    """Run ``names`` (``repeat`` times each, 1 or 2); return their records and the
    problems found."""
    records, problems = {}, []
    for name in names:
        start = time.perf_counter()
        first = run(name, workdir, interrupted=False)
        if repeat == 1:
            logger.info("%s: %d metrics (%.0f s, run once)", name, len(first),
                        time.perf_counter() - start)
            records[name] = to_record(first)
            continue
        second = run(name, workdir, interrupted=name in RESUMED)
        seconds = time.perf_counter() - start
        diff = differences(to_record(first)["metrics"], second)
        how = "interrupted and resumed" if name in RESUMED else "run again"
        if diff:
            problems.append(f"{name}: {how}, it differs:\n  " + "\n  ".join(diff))
            logger.error("%s: not reproducible (%s):\n  %s", name, how, "\n  ".join(diff))
        else:
            logger.info("%s: %d metrics, identical %s (%.0f s for both)", name, len(first),
                        how, seconds)
        records[name] = to_record(first)
    return records, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        choices=sorted(RUNS), help="re-record this run only (repeatable)")
    parser.add_argument("--output", type=Path, default=GOLDEN)
    parser.add_argument("--repeat", type=int, default=2, choices=(1, 2),
                        help="runs of each config (2: check they agree; default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)

    now = versions()
    data = {"versions": now, "runs": {}}
    if args.only and args.output.is_file():
        data = json.loads(args.output.read_text())
        if data.get("versions") != now:
            parser.error(f"{args.output} was recorded with {data.get('versions')}, this "
                         f"environment has {now}: record every run (drop --only)")
    names = args.only or list(RUNS)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedpers-golden-") as tmp:
        records, problems = record(names, Path(tmp), args.repeat)
    data["runs"].update(records)
    data["runs"] = {k: data["runs"][k] for k in RUNS if k in data["runs"]}
    if problems:
        logger.error("%d run(s) not reproducible; %s not written:\n%s", len(problems),
                     args.output, "\n".join(problems))
        return 1
    args.output.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    logger.info("wrote %s: %d runs (%.0f s)", args.output, len(data["runs"]),
                time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())

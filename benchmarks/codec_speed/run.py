"""Codec speed: encode + decode throughput of a 1M-parameter update, per codec.

Every codec in ``fedpers.codecs.CODECS`` (default settings) encodes and decodes the
same fp32 update (N(0, 0.01), the scale of a model update); the baseline, timed in
the same process and interleaved with the codecs, is a plain numpy copy of the
update. Prints a markdown table: encoded bytes, compression ratio, median encode
and decode times, MB/s of encode + decode (MB = 10^6 bytes of fp32 input), and the
slowdown against the copy.

    .venv/bin/python benchmarks/codec_speed/run.py [--params 1000000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fedpers.codecs import CODECS  # noqa: E402


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--codecs", nargs="*", default=list(CODECS))
    args = ap.parse_args(argv)

    x = {"update": np.random.default_rng(0).normal(0, 0.01, args.params).astype(np.float32)}
    raw = x["update"].nbytes
    mb = raw / 1e6
    rows = []
    copy_times = []
    for name in args.codecs:
        codec = CODECS[name]
        copy_times.append(_median_seconds(lambda: x["update"].copy(), args.repeats))
        rng = np.random.default_rng(1)
        codec.decode(codec.encode(x, rng), x)  # warm-up
        payload = codec.encode(x, rng)
        enc_s = _median_seconds(lambda c=codec, g=rng: c.encode(x, g), args.repeats)
        dec_s = _median_seconds(lambda c=codec, p=payload: c.decode(p, x), args.repeats)
        nbytes = sum(int(np.asarray(v).nbytes) for v in payload.values())
        rows.append((name, nbytes, enc_s, dec_s))
    copy_s = statistics.median(copy_times)

    print(f"{args.params:,} fp32 parameters ({mb:.1f} MB), median of {args.repeats}; "
          f"numpy {np.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}")
    print(f"baseline np.copy: {copy_s * 1e3:.2f} ms = {mb / copy_s:,.0f} MB/s\n")
    print("| codec | encoded bytes | ratio | encode ms | decode ms | enc+dec MB/s "
          "| x copy time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, nbytes, enc_s, dec_s in rows:
        total = enc_s + dec_s
        if not CODECS[name].lossy:  # the identity hands the arrays on: nothing to time
            print(f"| {name} | {nbytes:,} | 1.0 | - | - | - | - |")
            continue
        print(f"| {name} | {nbytes:,} | {raw / nbytes:.1f} | {enc_s * 1e3:.1f} | "
              f"{dec_s * 1e3:.1f} | {mb / total:,.0f} | {total / copy_s:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

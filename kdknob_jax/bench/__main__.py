"""python -m kdknob_jax.bench {decode,kl,calibrate} [options]: see each benchmark's --help."""

from __future__ import annotations

import sys

from kdknob_jax.bench import calibrate, decode, kl

BENCHMARKS = {"decode": decode.main, "kl": kl.main, "calibrate": calibrate.main}


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in BENCHMARKS:
    print(f"usage: python -m kdknob_jax.bench {{{','.join(BENCHMARKS)}}} [options]\n"
          f"unknown or missing benchmark {argv[0] if argv else ''!r}", file=sys.stderr)
    return 2
  return BENCHMARKS[argv[0]](argv[1:])


if __name__ == "__main__":
  sys.exit(main())

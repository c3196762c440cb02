r"""Compare our forward with a golden case of the authors' model, output by output.

    python -m experiments.check_reference --case=../shared/reference/tiny_a
    python -m experiments.check_reference --case=../shared/reference/tiny_b --x64

A case folder holds the authors' ``weights.safetensors``, ``inputs.npz`` and
``outputs.npz`` (``../shared/reference/README.md``). The model is built from the
weights alone (sizes from the shapes), the batch run through it, and the largest
difference per output printed beside its tolerance (float32: 1e-5; ``--x64``,
float64 with the stored buffers: 3e-6; losses: relative 1e-6). Exits 1 when any
output is outside its tolerance, 2 when the case cannot be read.
"""

from __future__ import annotations

import sys

from absl import flags

from experiments import cli
from sfs_jax.reference import parity
from sfs_jax.reference.weights import CheckpointMismatch


def define_flags() -> None:
    flags.DEFINE_string("case", None, "A golden case folder (weights.safetensors, inputs.npz, outputs.npz).",
                        required=True)
    flags.DEFINE_bool("x64", False, "Run in float64 (the tight check) instead of float32.")


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    args = flags.FLAGS
    try:
        results = parity.compare_case(args.case, x64=args.x64)
    except (FileNotFoundError, CheckpointMismatch, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    width = max(len(r.name) for r in results)
    print(f"{args.case} ({'float64' if args.x64 else 'float32'})")
    for result in results:
        status = "ok  " if result.ok else "FAIL"
        print(f"  {status} {result.name:<{width}}  max diff {result.difference:.3g}  "
              f"(tolerance {result.tolerance:.1g})")
    failed = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} outputs within tolerance" +
          (f"; outside: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    define_flags()
    cli.run(main)

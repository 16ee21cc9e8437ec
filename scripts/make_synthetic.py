"""Write synthetic data for a feature spec (see `trainer.data.datasets.synthetic`).

Example:
    .venv/bin/python scripts/make_synthetic.py feature_specs/synthetic_large.yaml --rows 1000000 --out /tmp/synth
"""
import argparse
import time

import trainer  # noqa: F401  (selects legacy Keras before TensorFlow is imported)
from trainer.data.datasets.synthetic import generate
from trainer.spec import load_spec
from trainer.spec.types import COMPRESSIONS, FORMATS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="feature spec YAML")
    parser.add_argument("--rows", type=int, default=100_000, help="number of rows (default: 100000)")
    parser.add_argument("--out", required=True, help="output folder for part-XXXXX shards (must hold none yet)")
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: the spec's data.format")
    parser.add_argument("--compression", choices=COMPRESSIONS, default=None,
                        help="tfrecord compression (CSV is written uncompressed, Parquet compresses "
                             "inside its files); default: the spec's")
    parser.add_argument("--shards", type=int, default=4, help="number of shards (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        spec = load_spec(args.spec)
        fmt = args.format or spec.data.format
        result = generate(spec, args.rows, args.out, fmt=fmt, n_shards=args.shards, seed=args.seed,
                          compression=args.compression or ("none" if fmt != "tfrecord" else spec.data.compression))
    except ValueError as exc:  # SpecError, DataError and bad arguments: the message says what is wrong
        parser.exit(2, f"error: {exc}\n")
    elapsed = time.perf_counter() - start
    for path in result.files:
        print(path)
    print(f"rows: {result.n_rows}  columns: {len(result.columns)}  files: {len(result.files)}  "
          f"elapsed: {elapsed:.1f} s ({elapsed / result.n_rows * 1e6:.0f} us/row)")


if __name__ == "__main__":
    main()

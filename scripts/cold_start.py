"""AUC on the cold-start rows (whose user or item id is out of the vocabulary) and overall, per model and export.

Scores each model directory's checkpoint and each export's signatures on every row of --data and prints (each
source as soon as it is scored), for all rows and each slice, the rows and the teacher's and the student's AUCs.
The slices come from the vocabularies of --reference (default: the first model directory), so every source is
scored on the same rows.

    python scripts/cold_start.py --data 'out/kuairand/tfrecord/date=20220430/*' \
        --model-dir runs/off runs/dropout --export exports/off/1 exports/dropout/1
"""
import argparse
import json
import os

import trainer  # noqa: F401  (legacy Keras before TensorFlow)
from benchmarks.cold_start import checkpoint_scores, cold_start_table, export_scores, slices
from trainer.evaluation.cold_start import slice_aucs
from trainer.spec import load_spec
from trainer.spec.sides import id_feature

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=os.path.join(REPO, "feature_specs", "kuairand.yaml"))
    parser.add_argument("--data", nargs="+", required=True, help="the evaluation rows (one or more globs)")
    parser.add_argument("--model-dir", nargs="*", default=[], help="model directories: their latest checkpoints")
    parser.add_argument("--export", nargs="*", default=[], help="exports (a version directory or a base: its newest)")
    parser.add_argument("--reference", help="the model directory whose vocabularies define the slices "
                                            "(default: the first --model-dir)")
    parser.add_argument("--features", nargs="+", help="categorical features whose unseen ids make a slice "
                                                      "(default: the first user and the first item id feature)")
    parser.add_argument("--model-spec", nargs="*", default=[], metavar="DIR=SPEC",
                        help="a model directory trained with another spec than --spec (e.g. other min_counts)")
    parser.add_argument("--json", help="also write every AUC here")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    own_specs = dict(entry.split("=", 1) for entry in args.model_spec)
    reference = args.reference or (args.model_dir[0] if args.model_dir else None)
    if reference is None:
        parser.error("give --reference (a model directory) when no --model-dir is scored")
    features = args.features or [id_feature(spec, "user"), id_feature(spec, "item")]
    rows = slices(spec, reference, args.data, features)
    sources = []
    for d in args.model_dir:  # each printed once scored
        sources.append(checkpoint_scores(load_spec(own_specs[d]) if d in own_specs else spec, d, args.data))
        print(cold_start_table(rows, sources[-1:]), flush=True)
    for e in args.export:
        sources.append(export_scores(spec, e, args.data))
        print(cold_start_table(rows, sources[-1:]), flush=True)
    if args.json:
        result = {s.source: {name: {"rows": int(mask.sum()), **slice_aucs(s.labels, s.scores, mask)}
                             for name, mask in rows.items()} for s in sources}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()

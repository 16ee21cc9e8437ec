"""The training benchmark's helpers (the benchmark itself is scripts/bench_training.py)."""
import os

import trainer  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

from trainer.spec import load_spec
from benchmarks.train_bench import step_times, with_table_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_with_table_rows_caps_every_table_and_keeps_the_rest():
    spec = load_spec(os.path.join(ROOT, "feature_specs", "synthetic_large.yaml"))
    small = with_table_rows(spec, 10_000)
    assert [f.name for f in small.features] == [f.name for f in spec.features]
    for big, cut in zip(spec.features, small.features):
        assert cut.embedding == big.embedding and cut.kind == big.kind and cut.columns == big.columns
        if big.vocabulary is None:
            assert cut.vocabulary is None
        elif big.vocabulary.source == "hash":
            assert cut.vocabulary.buckets == min(big.vocabulary.buckets, 10_000)
        else:
            assert cut.vocabulary.max_size + cut.vocabulary.oov_buckets <= 10_000
    assert {t.vocabulary.buckets for t in small.tables.values() if t.vocabulary.source == "hash"} == {10_000}
    assert small.labels == spec.labels and small.group_key == spec.group_key


def test_step_times_interleave_steps_with_limits():
    calls = []

    def step(name):
        return lambda batch: calls.append((name, batch)) or {"loss/total": 0.0}

    times = step_times({"a": step("a"), "b": step("b")}, [0, 1, 2], rounds=2, warmup=1, limit={"b": 2})
    assert len(times["a"].seconds) == 6 and len(times["b"].seconds) == 4
    assert calls[:2] == [("a", 0), ("b", 0)]  # warm-up
    assert calls[2:] == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)] * 2  # interleaved step by step

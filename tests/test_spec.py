"""The feature spec: the real KuaiRand spec loads, and every bad spec is reported
with its file, line, field path and what was expected."""
import os
import re

import pytest

from conftest import spec_text
from trainer.errors import SpecError
from trainer.spec import load_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUAIRAND = os.path.join(REPO, "feature_specs", "kuairand.yaml")

# features: [0] user_id, [1] video_id, [2] watch_seq, [3] duration, [4] stat_plays, [5] user_video
# labels:   [0] click, [1] watch
BASE = spec_text("spec_base")


def edit(text: str, old: str, new: str) -> str:
    """Replace `old`, which must occur exactly once, so each case is one deliberate edit."""
    assert text.count(old) == 1, f"edit target occurs {text.count(old)} times: {old!r}"
    return text.replace(old, new)


def line_of(text: str, marker: str) -> int:
    """1-based line of the only line that is `marker` (ignoring indentation) or else contains it."""
    lines = list(enumerate(text.splitlines(), 1))
    hits = [i for i, line in lines if line.strip() == marker.strip()] or [i for i, line in lines if marker in line]
    assert len(hits) == 1, f"marker {marker!r} is on lines {hits}"
    return hits[0]


def write(tmp_path, text: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


def spec_error(tmp_path, text: str) -> tuple[SpecError, str]:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    return exc_info.value, path


def assert_issue(err: SpecError, file: str, line: int, field: str, *phrases: str) -> None:
    """Some issue names `file`, `line` and `field`, and its message contains every phrase."""
    candidates = [i for i in err.issues if i.field == field]
    assert candidates, f"no issue for field {field!r}; got:\n{err}"
    matching = [i for i in candidates if all(p in i.message for p in phrases)]
    assert matching, f"issue(s) for {field!r} lack {phrases}; got:\n{err}"
    issue = matching[0]
    assert (issue.file, issue.line) == (file, line), f"wrong location for {field!r}: {issue}"
    assert f"{file}:{line}: {field}: {issue.message}" in str(err)


def test_base_spec_is_valid(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    assert [f.name for f in spec.features] == ["user_id", "video_id", "watch_seq", "duration", "stat_plays",
                                              "user_video"]
    assert spec.tables["video"].features == ("video_id", "watch_seq")


# ---------------------------------------------------------------- kuairand.yaml

@pytest.fixture(scope="module")
def kuairand():
    return load_spec(KUAIRAND)


def test_kuairand_shared_video_table(kuairand):
    video = kuairand.tables["video"]
    assert set(video.features) == {"video_id", "watch_seq", "like_seq", "long_watch_seq"}
    assert video.dim == 16 and video.dtype == "int64"
    assert video.vocabulary.source == "data" and video.vocabulary.oov_buckets == 1
    for name in ("watch_seq", "like_seq", "long_watch_seq"):
        f = kuairand.feature(name)
        assert (f.kind, f.side, f.max_length, f.pooling, f.keep) == ("sequence", "user", 50, "mean", "last")
    assert kuairand.tables["author"].features == ("author_id",)
    assert kuairand.tables["user"].features == ("user_id",)


def test_kuairand_sides(kuairand):
    privileged = kuairand.features_on("privileged")
    assert len(privileged) == 22
    assert all(f.name.startswith("stat_") and f.kind == "numeric" for f in privileged)
    assert [t.op for t in kuairand.feature("stat_like_cnt").transforms] == ["log1p", "zscore"]
    assert {f.name for f in kuairand.features_on("context")} == {"tab", "hourmin"}
    assert "video_id" in {f.name for f in kuairand.features_on("item")}
    # No student feature reads an offline-only column.
    privileged_cols = {c for f in privileged for c in f.columns}
    assert not privileged_cols & {c for f in kuairand.features_on("user", "item", "context") for c in f.columns}


def test_kuairand_cross(kuairand):
    cross = kuairand.feature("user_author")
    assert cross.is_cross and cross.side == "cross"
    assert cross.columns == ("user_id", "author_id")
    assert cross.vocabulary.source == "hash" and cross.vocabulary.buckets == 200000
    assert cross.vocabulary.oov_buckets == 0
    assert kuairand.tables["user_author"].dim == 16
    assert [f.name for f in kuairand.features_on("cross")] == ["user_author"]
    assert not any(f.is_cross for f in kuairand.features_on("user", "item", "context"))


def test_kuairand_tables_and_columns(kuairand):
    tables = kuairand.tables
    assert list(tables)[:2] == ["user", "user_active_degree"]  # first-use order
    assert tables["user_active_degree"].dim == 16  # table name defaults to the feature name
    assert tables["tag"].dtype == "string" and kuairand.feature("tags").columns == ("tag",)
    bucket = kuairand.feature("duration_bucket")
    assert bucket.bucketized and bucket.is_id and bucket.columns == ("duration_ms",)
    assert bucket.transforms[-1].boundaries == (7000.0, 15000.0, 30000.0, 60000.0, 120000.0, 300000.0)
    assert tables["duration_bucket"].vocabulary.source == "bucketize"
    assert kuairand.feature("duration").columns == ("duration_ms",) and not kuairand.feature("duration").is_id
    assert kuairand.feature("onehot_feat4").default == -1 and kuairand.feature("onehot_feat0").default is None

    cols = kuairand.columns
    assert len(cols) == len(set(cols))
    assert cols.count("duration_ms") == 1
    assert {"tag", "is_click", "long_view", "is_like", "play_time_ms", "date", "user_id"} <= set(cols)
    assert "tags" not in cols and "click" not in cols
    assert kuairand.group_key == ("user_id", "date")


def test_kuairand_labels_and_data(kuairand):
    assert [l.name for l in kuairand.labels] == ["click", "long_view", "like", "watch_time"]
    assert [l.column for l in kuairand.labels] == ["is_click", "long_view", "is_like", "play_time_ms"]
    watch = kuairand.labels[-1]
    assert (watch.type, watch.transform, watch.weight) == ("regression", "log1p", 0.5)
    assert all(l.type == "binary" and l.weight == 1.0 for l in kuairand.labels[:3])
    assert kuairand.sample_weight is None
    assert kuairand.name == "kuairand" and kuairand.path == KUAIRAND
    assert re.fullmatch(r"[0-9a-f]{16}", kuairand.fingerprint)
    assert kuairand.data.format == "tfrecord" and kuairand.data.compression == "GZIP"
    assert kuairand.data.eval == (os.path.join(REPO, "out", "kuairand", "tfrecord", "date=20220430",
                                               "*.tfrecord.gz"),)


# ---------------------------------------------------------------- YAML-level problems

def test_yaml_syntax_error(tmp_path):
    text = edit(BASE, "  - name: stat_plays\n", "  - name: stat_plays: oops\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "oops"), "<yaml>", "invalid YAML", "mapping values are not allowed")


def test_duplicate_yaml_key(tmp_path):
    text = edit(BASE, "    pooling: mean\n", "    pooling: mean\n    pooling: sum\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "pooling: sum"), "features[2].pooling", "duplicate key")


def test_unreadable_value_is_a_spec_error(tmp_path):
    text = edit(BASE, "    max_length: 20\n", "    max_length: !!int twenty\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "twenty"), "features[2].max_length", "cannot read value 'twenty'")


def test_merge_keys_are_supported(tmp_path):
    text = edit(BASE, "  - name: user_id\n    kind: categorical\n    side: user\n    dtype: int64\n",
                "  - name: user_id\n    <<: &user_cat {kind: categorical, side: user, dtype: int64}\n")
    text += "  - {name: user_level, <<: *user_cat, dtype: string, vocabulary: {source: data}, embedding: {dim: 2}}\n"
    spec = load_spec(write(tmp_path, text))
    assert (spec.feature("user_id").kind, spec.feature("user_id").dtype) == ("categorical", "int64")
    level = spec.feature("user_level")
    assert (level.kind, level.side, level.dtype) == ("categorical", "user", "string")  # explicit key wins


def test_missing_spec_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    assert str(exc_info.value).startswith(f"{path}: <file>: cannot read the spec file: No such file")


# ---------------------------------------------------------------- schema problems

def test_unknown_key_lists_allowed_keys(tmp_path):
    text = edit(BASE, "    pooling: mean\n", "    pooling: mean\n    colour: blue\n")
    err, path = spec_error(tmp_path, text)
    allowed = ("cardinality, cross_of, default, dim, dtype, embedding, keep, kind, max_length, name, pooling, "
               "side, source, transform, vocabulary")
    assert_issue(err, path, line_of(text, "colour"), "features[2].colour", "unknown key", allowed)


def test_unknown_top_level_key(tmp_path):
    text = BASE + "lables: []\n"
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "lables"), "lables", "unknown key",
                 "data, description, features, group_key, labels, model, name, plugins, sample_weight, training")


def test_wrong_type(tmp_path):
    text = edit(BASE, "      dim: 16\n", '      dim: "sixteen"\n')
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "sixteen"), "features[1].embedding.dim",
                 "expected an integer, got a string ('sixteen')")


def test_non_positive_dimension(tmp_path):
    text = edit(BASE, "      dim: 16\n", "      dim: 0\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "dim: 0"), "features[1].embedding.dim", "expected a positive integer")


@pytest.mark.parametrize("old, new, marker, field, phrases", [
    ("  - name: stat_plays\n    kind: numeric\n", "  - kind: numeric  # no name\n", "# no name",
     "features[4].name", ("missing required field 'name'",)),
    ("    kind: numeric\n    side: privileged\n", "    side: privileged\n", "name: stat_plays",
     "features[4].kind", ("missing required field 'kind'", "categorical, sequence, numeric, dense_vector")),
    ("    side: privileged\n", "", "name: stat_plays",
     "features[4].side", ("missing required field 'side'", "user, context, item, cross, privileged")),
    ("    embedding: {table: user, dim: 8}\n", "", "name: user_id",
     "features[0].embedding", ("missing required field 'embedding' for a categorical feature",)),
    ("    max_length: 20\n", "", "name: watch_seq",
     "features[2].max_length", ("missing required field 'max_length' for a sequence feature", "positive integer")),
    ("    dtype: int64\n    max_length: 20\n", "    max_length: 20\n", "name: watch_seq",
     "features[2].dtype", ("missing required field 'dtype' for a sequence feature", "int64 or string")),
    ("    vocabulary: {source: data}\n", "", "name: user_id",
     "features[0].vocabulary", ("missing required field 'vocabulary' for a categorical feature",)),
    ("    embedding:\n      table: video\n      dim: 16\n", "    embedding:\n      table: video  # no dim\n",
     "embedding:", "features[1].embedding.dim", ("missing required field 'dim'",)),
    ("    type: regression\n", "", "- name: watch", "labels[1].type", ("missing required field 'type'",)),
    ("name: tiny\n", "# unnamed\n", "labels:", "name", ("missing required field 'name'",)),
], ids=["name", "kind", "side", "embedding", "max_length", "dtype", "vocabulary", "embedding.dim", "label.type",
        "spec.name"])
def test_missing_required_field(tmp_path, old, new, marker, field, phrases):
    text = edit(BASE, old, new)
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, marker), field, *phrases)


@pytest.mark.parametrize("old, new, field, expected", [
    ("    kind: numeric\n    side: privileged\n", "    kind: bogus\n    side: privileged\n", "features[4].kind",
     "expected one of categorical, sequence, numeric, dense_vector, got 'bogus'"),
    ("    side: privileged\n", "    side: bogus\n", "features[4].side",
     "expected one of user, context, item, cross, privileged, got 'bogus'"),
    ("    pooling: mean\n", "    pooling: median\n", "features[2].pooling",
     "expected one of mean, sum, max, got 'median'"),
], ids=["kind", "side", "pooling"])
def test_bad_choice(tmp_path, old, new, field, expected):
    text = edit(BASE, old, new)
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, new.strip().splitlines()[0]), field, expected)


def test_field_not_allowed_for_kind(tmp_path):
    text = edit(BASE, "    transform: [log1p, zscore]\n  - name: stat_plays",
                "    transform: [log1p, zscore]\n    pooling: sum\n  - name: stat_plays")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "pooling: sum"), "features[3].pooling", "not allowed for a numeric feature")


# ---------------------------------------------------------------- cross-reference problems

def test_duplicate_feature_names(tmp_path):
    text = edit(BASE, "  - name: duration\n", "  - name: video_id  # again\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "# again"), "features[3].name",
                 "duplicate feature name 'video_id' (first at features[1])")


def test_duplicate_label_names(tmp_path):
    text = edit(BASE, "  - name: watch\n", "  - name: click\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "  - name: click"), "labels[1].name",
                 "duplicate label name 'click' (first at labels[0])")


def test_shared_table_disagrees_on_dimension(tmp_path):
    text = edit(BASE, "    embedding: {table: video, dim: 16}\n", "    embedding: {table: video, dim: 32}\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "dim: 32"), "features[2].embedding.dim",
                 "shares table 'video' with feature 'video_id'", "disagrees on dimension: 32 here, 16 there")


def test_shared_table_disagrees_on_vocabulary(tmp_path):
    text = edit(BASE, "    pooling: mean\n    vocabulary: {source: data, min_count: 1}\n",
                "    pooling: mean\n    vocabulary: {source: data, min_count: 5}\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "min_count: 5"), "features[2].vocabulary",
                 "shares table 'video' with feature 'video_id'", "disagrees on vocabulary",
                 "min_count=5", "min_count=1")


@pytest.mark.parametrize("side", ["user", "item", "context"])
def test_cross_on_student_side(tmp_path, side):
    text = edit(BASE, "    side: cross\n", f"    side: {side}  # student\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "# student"), "features[5].side",
                 f"a student tower ({side}) would see cross feature 'user_video'", "crosses must have side: cross")


def test_student_reads_privileged_column(tmp_path):
    text = edit(BASE, "    side: privileged\n", "    side: privileged\n    source: duration_ms\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "- name: duration") + 1, "features[3].source",
                 "student tower (item) would see column 'duration_ms'", "offline-only", "'stat_plays'")


def test_student_reads_privileged_column_through_its_name(tmp_path):
    # user_id gives no `source`; the column comes from its name, so that is the field to fix.
    text = edit(BASE, "    side: privileged\n", "    side: privileged\n    source: user_id  # leak\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "  - name: user_id"), "features[0].name",
                 "student tower (user) would see column 'user_id'", "offline-only")


def test_label_column_is_a_feature_column(tmp_path):
    text = edit(BASE, "column: is_click", "column: duration_ms")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "column: duration_ms"), "labels[0].column",
                 "label column 'duration_ms' is also read by feature 'duration'", "leak")


def test_label_problem_located_after_an_invalid_label(tmp_path):
    # labels[0] fails on its own; the leak in labels[1] must still be reported at labels[1].
    text = edit(BASE, "type: binary", "type: bogus")
    text = edit(text, "    column: play_ms\n", "    column: duration_ms\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "type: bogus"), "labels[0].type", "expected one of binary, regression")
    assert_issue(err, path, line_of(text, "column: duration_ms"), "labels[1].column",
                 "label column 'duration_ms' is also read by feature 'duration'")


def test_sample_weight_is_a_feature_column(tmp_path):
    text = BASE + "sample_weight: duration_ms\n"
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "sample_weight"), "sample_weight",
                 "sample weight column 'duration_ms' is also a feature column")


def test_bucketize_not_last(tmp_path):
    text = edit(BASE, "    side: item\n    transform: [log1p, zscore]\n",
                "    side: item\n    transform: [{bucketize: [1, 2]}, log1p]\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "bucketize"), "features[3].transform",
                 "bucketize must be the last transform step")


def test_bucketize_boundaries_not_increasing(tmp_path):
    text = edit(BASE, "    side: item\n    transform: [log1p, zscore]\n",
                "    side: item\n    transform:\n      - bucketize: [10, 5, 20]\n    embedding: {dim: 4}\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "bucketize"), "features[3].transform[0].bucketize",
                 "boundaries must be strictly increasing, got [10, 5, 20]")


def test_bucketized_numeric_is_embedded(tmp_path):
    text = edit(BASE, "    side: item\n    transform: [log1p, zscore]\n",
                "    side: item\n    transform: [{bucketize: [10, 20]}]\n    embedding: {dim: 4}\n")
    spec = load_spec(write(tmp_path, text))
    assert spec.feature("duration").bucketized and spec.tables["duration"].dim == 4


def test_vocabulary_file_found_relative_to_spec(tmp_path):
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "users.txt").write_text("1\n2\n")
    text = edit(BASE, "{source: data}", "{source: file, path: vocab/users.txt}")
    spec = load_spec(write(tmp_path, text))
    assert spec.feature("user_id").vocabulary.path == str(tmp_path / "vocab" / "users.txt")


def test_vocabulary_file_not_found(tmp_path):
    text = edit(BASE, "{source: data}", "{source: file, path: vocab/users.txt}")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "users.txt"), "features[0].vocabulary.path",
                 f"vocabulary file not found: {tmp_path / 'vocab' / 'users.txt'}")


def test_hash_without_buckets(tmp_path):
    text = edit(BASE, "{source: hash, buckets: 1000}", "{source: hash}")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "{source: hash}"), "features[5].vocabulary.buckets",
                 "missing required field 'buckets' for source: hash")


def test_no_item_feature(tmp_path):
    text = edit(BASE, "    side: item\n    dtype: int64\n", "    side: user\n    dtype: int64\n")
    text = edit(text, "    side: item\n    transform", "    side: user\n    transform")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "features:"), "features",
                 "the student's item tower needs at least one item feature")


def test_broken_item_features_do_not_also_empty_the_item_tower(tmp_path):
    text = edit(BASE, "      dim: 16\n", '      dim: "sixteen"\n')
    text = edit(text, "    side: item\n    transform: [log1p, zscore]\n", "    side: item\n    transform: [cube]\n")
    err, _ = spec_error(tmp_path, text)
    assert {i.field for i in err.issues} == {"features[1].embedding.dim", "features[3].transform[0]"}, str(err)


def test_column_read_with_different_default(tmp_path):
    text = BASE + ("  - name: duration_raw\n    source: duration_ms  # raw\n    kind: numeric\n    side: item\n"
                   "    default: 5\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "# raw"), "features[6].source",
                 "column 'duration_ms' is also read by feature 'duration'", "default=5.0 here", "default=None there")


def test_column_read_with_different_dtype(tmp_path):
    text = BASE + ("  - {name: duration_id, source: duration_ms, kind: categorical, side: item, dtype: int64,\n"
                   "     vocabulary: {source: data}, embedding: {dim: 4}}  # as id\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "duration_id"), "features[6].source",
                 "column 'duration_ms' is also read by feature 'duration'", "int64/scalar", "float32/scalar")


def test_all_problems_reported_at_once(tmp_path):
    text = edit(BASE, "      dim: 16\n", '      dim: "sixteen"\n')
    text = edit(text, "    pooling: mean\n", "    pooling: median\n")
    text = edit(text, "{source: hash, buckets: 1000}", "{source: hash}")
    text = edit(text, "  - name: watch\n", "  - name: click  # dup\n")
    text = edit(text, "    side: privileged\n", "    side: privileged\n    colour: red\n")
    text += "sample_weight: duration_ms\n"
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "sixteen"), "features[1].embedding.dim", "expected an integer")
    assert_issue(err, path, line_of(text, "median"), "features[2].pooling", "expected one of mean, sum, max")
    assert_issue(err, path, line_of(text, "{source: hash}"), "features[5].vocabulary.buckets", "missing")
    assert_issue(err, path, line_of(text, "# dup"), "labels[1].name", "duplicate label name")
    assert_issue(err, path, line_of(text, "colour"), "features[4].colour", "unknown key")
    assert_issue(err, path, line_of(text, "sample_weight"), "sample_weight", "also a feature column")
    assert len(err.issues) == 6, str(err)
    assert len(str(err).splitlines()) == 6


def test_a_split_takes_one_glob_or_a_list_of_globs(tmp_path):
    def with_data(lines: str) -> str:
        return edit(BASE, "name: tiny\n", f"name: tiny\ndata:\n{lines}")
    spec = load_spec(write(tmp_path, with_data("  train: [a/*.gz, ../b/part-*]\n  eval: c.gz\n")))
    assert spec.data.train == (str(tmp_path / "a" / "*.gz"), str(tmp_path.parent / "b" / "part-*"))
    assert spec.data.eval == (str(tmp_path / "c.gz"),) and spec.data.validation is None
    text = with_data("  train: [a/*.gz, 7]\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "train:"), "data.train[1]", "expected a non-empty glob string, got 7")
    text = with_data("  validation: []\n")
    err, path = spec_error(tmp_path, text)
    assert_issue(err, path, line_of(text, "validation:"), "data.validation", "a non-empty list of globs")

"""The versioned item vector store: round trip, resumable atomic writes, refusals, lookups."""
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from serving.item_store.reader import ItemVectorStore
from serving.item_store.writer import StoreWriter
from trainer.errors import DataError, ExportError

DIM = 4
FILES = ["ids.npy", "vectors.npy", "manifest.json"]


def catalog(n, id_dtype="int64", seed=0):
    """n distinct ids and their float32 vectors."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(10 * n)[:n].astype(np.int64) + 1000
    if id_dtype == "string":
        ids = np.array([f"item-{i}" + "x" * (i % 7) for i in ids])  # ids of varying width
    return ids, rng.normal(size=(n, DIM)).astype(np.float32)


def key(version):
    """The directory of a version's vectors: `<version>-<fingerprint>` (the tests' fingerprint: fp<version>)."""
    return f"{version}-fp{version}"


def new_writer(store, version=1, id_dtype="int64", **overrides):
    kwargs = dict(fingerprint=f"fp{version}", dim=DIM, id_dtype=id_dtype, export_dir=f"/models/export/{version}",
                  id_column="video_id",
                  metadata={"spec": "kuairand", "steps": 1000})
    kwargs.update(overrides)
    return StoreWriter(store, version, **kwargs)


def write_chunks(writer, ids, vectors, size, start=0):
    for lo in range(start, len(ids), size):
        writer.write(ids[lo:lo + size], vectors[lo:lo + size], offset=lo)


def write_store(store, version, ids, vectors, size=7, **kwargs):
    writer = new_writer(store, version, **kwargs)
    write_chunks(writer, ids, vectors, size)
    return writer.finish()


def without_created(manifest):
    return {k: v for k, v in manifest.items() if k != "created"}


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("id_dtype", ["int64", "string"])
def test_chunks_round_trip_exactly(tmp_path, id_dtype):
    ids, vectors = catalog(50, id_dtype)
    final = write_store(tmp_path, 3, ids, vectors, size=7, id_dtype=id_dtype)
    assert final == tmp_path / key(3)
    assert sorted(os.listdir(tmp_path)) == [key(3)]  # the partial directory was renamed, nothing left over
    assert sorted(os.listdir(final)) == sorted(FILES)

    store = ItemVectorStore.open(tmp_path)
    assert store.model_version == 3 and len(store) == 50 and store.dim == DIM
    np.testing.assert_array_equal(store.ids, ids)
    assert store.ids.dtype == (np.int64 if id_dtype == "int64" else ids.dtype)
    assert store.vectors.dtype == np.float32 and isinstance(store.vectors, np.memmap)
    np.testing.assert_array_equal(store.vectors, vectors)
    assert without_created(store.manifest) == {
        "format_version": 2, "model_version": 3, "fingerprint": "fp3", "export_dir": "/models/export/3", "dim": DIM,
        "count": 50, "id_column": "video_id", "id_dtype": id_dtype, "metadata": {"spec": "kuairand", "steps": 1000},
        "attributes": [], "reference_time": None}
    assert store.manifest["created"].endswith("+00:00")


@pytest.mark.parametrize("id_dtype", ["int64", "string"])
def test_lookup_returns_vectors_in_the_order_asked(tmp_path, id_dtype):
    ids, vectors = catalog(30, id_dtype)
    write_store(tmp_path, 1, ids, vectors, id_dtype=id_dtype)
    store = ItemVectorStore.open(tmp_path)
    picks = [17, 0, 29, 17, 5]
    got = store.lookup(ids[picks].tolist())  # plain Python ints / strs
    assert got.shape == (5, DIM) and got.dtype == np.float32
    np.testing.assert_array_equal(got, vectors[picks])
    assert store.lookup([]).shape == (0, DIM)


def test_newest_version_by_default_explicit_version_and_listing(tmp_path):
    ids, vectors = catalog(20)
    for version in (2, 10, 9):  # 10 > 9 numerically, not as text
        write_store(tmp_path, version, ids, vectors + version)
    new_writer(tmp_path, 11).write(ids[:5], vectors[:5])  # an unfinished write of a newer version
    (tmp_path / "12").mkdir()
    (tmp_path / key(13)).mkdir()  # a stray directory without a manifest

    assert ItemVectorStore.versions(tmp_path) == [2, 9, 10]
    assert ItemVectorStore.open(tmp_path).model_version == 10
    np.testing.assert_array_equal(ItemVectorStore.open(tmp_path).vectors, vectors + 10)
    store = ItemVectorStore.open(tmp_path, version=2)
    assert store.model_version == 2 and store.path == tmp_path / key(2)
    np.testing.assert_array_equal(store.vectors, vectors + 2)
    assert ItemVectorStore.versions(tmp_path / "missing") == []


# ----------------------------------------------------------------------------- resuming


@pytest.mark.parametrize("id_dtype", ["int64", "string"])
def test_interrupted_write_resumes_to_an_identical_result(tmp_path, id_dtype):
    ids, vectors = catalog(45, id_dtype)
    write_store(tmp_path / "reference", 5, ids, vectors, size=10, id_dtype=id_dtype)

    store = tmp_path / "resumed"
    killed = new_writer(store, 5, id_dtype=id_dtype)
    write_chunks(killed, ids[:20], vectors[:20], size=10)  # two whole parts, then the process "dies"
    del killed
    partial = store / f".partial-{key(5)}"
    half = partial / "part-000002-000000000020-000000000030.npz.tmp"
    half.write_bytes(b"PK\x03\x04 half a zip")  # killed while writing the third part

    writer = new_writer(store, 5, id_dtype=id_dtype)
    assert writer.resumed_parts == 2 and writer.num_parts == 2
    assert writer.next_offset == 20
    assert not half.exists()
    assert ItemVectorStore.versions(store) == []  # nothing is readable before finish()
    with pytest.raises(ExportError, match="continues at item 20"):
        writer.write(ids[:10], vectors[:10], offset=0)
    write_chunks(writer, ids, vectors, size=13, start=writer.next_offset)  # other chunk sizes on resume
    assert writer.next_offset == 45 and writer.num_parts == 4
    writer.finish()

    for name in ("ids.npy", "vectors.npy"):
        assert filecmp.cmp(store / key(5) / name, tmp_path / "reference" / key(5) / name, shallow=False), name
    resumed, reference = ItemVectorStore.open(store), ItemVectorStore.open(tmp_path / "reference")
    assert without_created(resumed.manifest) == without_created(reference.manifest)
    assert sorted(os.listdir(store)) == [key(5)]


def test_resume_twice_and_after_every_part(tmp_path):
    ids, vectors = catalog(12)
    for lo in range(0, 12, 4):  # a new process for every chunk
        writer = new_writer(tmp_path, 1)
        assert writer.next_offset == lo and writer.resumed_parts == lo // 4
        writer.write(ids[lo:lo + 4], vectors[lo:lo + 4], offset=lo)
    new_writer(tmp_path, 1).finish()
    np.testing.assert_array_equal(ItemVectorStore.open(tmp_path).vectors, vectors)


def test_killed_inside_finish_after_the_final_files_resumes(tmp_path):
    ids, vectors = catalog(25)
    killed = new_writer(tmp_path, 4)
    write_chunks(killed, ids, vectors, size=10)
    killed._write_final_files()  # finish() died after writing the final files ...
    os.remove(sorted((tmp_path / f".partial-{key(4)}").glob("part-*.npz"))[0])  # ... while deleting the parts
    assert ItemVectorStore.versions(tmp_path) == []

    writer = new_writer(tmp_path, 4)
    assert writer.next_offset == 25
    with pytest.raises(ExportError, match="call finish"):
        writer.write(ids[:1] + 10**6, vectors[:1])
    writer.finish()
    store = ItemVectorStore.open(tmp_path)
    np.testing.assert_array_equal(store.ids, ids)
    np.testing.assert_array_equal(store.vectors, vectors)
    assert sorted(os.listdir(tmp_path / key(4))) == sorted(FILES)


# ----------------------------------------------------------------------------- refusals


def test_complete_version_is_never_overwritten(tmp_path):
    ids, vectors = catalog(10)
    write_store(tmp_path, 7, ids, vectors)
    before = (tmp_path / key(7) / "vectors.npy").read_bytes()
    with pytest.raises(ExportError) as info:
        new_writer(tmp_path, 7)
    message = str(info.value)
    assert str(tmp_path / key(7)) in message and "new model version" in message and "delete" in message
    assert not (tmp_path / f".partial-{key(7)}").exists()
    assert (tmp_path / key(7) / "vectors.npy").read_bytes() == before


def test_finish_refuses_when_another_writer_completed_the_version(tmp_path):
    ids, vectors = catalog(10)
    first = new_writer(tmp_path, 2)
    first.write(ids, vectors)
    second = new_writer(tmp_path, 2)  # a second process resumes the same write and publishes it first
    second.finish()
    with pytest.raises(ExportError, match=f"already complete in {tmp_path / '2'}"):
        first.finish()
    np.testing.assert_array_equal(ItemVectorStore.open(tmp_path).vectors, vectors)


@pytest.mark.parametrize("field, change", [
    ("dim", {"dim": DIM + 1}),
    ("id_dtype", {"id_dtype": "string"}),
    ("export_dir", {"export_dir": "/models/other_export/1"}),
    ("metadata", {"metadata": {"spec": "kuairand", "steps": 2000}}),
    ("id_column", {"id_column": "item_id"}),
])
def test_resume_with_other_settings_is_refused(tmp_path, field, change):
    ids, vectors = catalog(10)
    new_writer(tmp_path, 1).write(ids[:5], vectors[:5])
    with pytest.raises(ExportError) as info:
        new_writer(tmp_path, 1, **change)
    message = str(info.value)
    assert f"{field}: started with" in message and str(tmp_path / f".partial-{key(1)}") in message
    writer = new_writer(tmp_path, 1)  # the partial is untouched and still resumes with the original settings
    assert writer.next_offset == 5


def test_same_export_dir_spelled_relative_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ids, vectors = catalog(10)
    new_writer(tmp_path / "store", 1, export_dir="export/1").write(ids[:5], vectors[:5])
    writer = new_writer(tmp_path / "store", 1, export_dir=str(tmp_path / "export" / "1"))
    assert writer.next_offset == 5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
def test_non_finite_vector_names_the_item_and_part(tmp_path, bad):
    ids, vectors = catalog(10)
    writer = new_writer(tmp_path, 1)
    writer.write(ids[:4], vectors[:4])
    chunk = vectors[4:].astype(np.float64)
    chunk[3, 2] = bad  # 1e300 overflows to inf in float32
    with pytest.raises(DataError) as info:
        writer.write(ids[4:], chunk)
    message = str(info.value)
    assert f"item id {int(ids[7])}" in message and "part 1" in message and "not finite" in message
    assert writer.next_offset == 4 and writer.num_parts == 1  # nothing of the bad chunk was written
    assert len(list((tmp_path / f".partial-{key(1)}").glob("part-*"))) == 1


@pytest.mark.parametrize("vectors, match", [
    (np.zeros((3, DIM + 1)), r"shape \[n, 4\].*\(3, 5\)"),
    (np.zeros(3 * DIM), r"shape \[n, 4\]"),
    (np.zeros((2, DIM)), "3 item ids but 2 vectors"),
    ([["a", "b", "c", "d"]] * 3, "not convertible to float32"),
])
def test_badly_shaped_vectors_are_refused(tmp_path, vectors, match):
    writer = new_writer(tmp_path, 1)
    with pytest.raises(DataError, match=match):
        writer.write([1, 2, 3], vectors)
    assert writer.next_offset == 0


def test_duplicate_id_within_a_chunk(tmp_path):
    writer = new_writer(tmp_path, 1)
    with pytest.raises(DataError, match="duplicate item id 42 within this chunk"):
        writer.write([7, 42, 3, 42], np.zeros((4, DIM)))


def test_duplicate_id_across_parts_and_across_a_resume(tmp_path):
    writer = new_writer(tmp_path, 1, id_dtype="string")
    writer.write(["a", "b"], np.zeros((2, DIM)))
    with pytest.raises(DataError, match="duplicate item id 'b': already written"):
        writer.write(["c", "b"], np.zeros((2, DIM)))
    resumed = new_writer(tmp_path, 1, id_dtype="string")
    with pytest.raises(DataError, match="duplicate item id 'a': already written"):
        resumed.write(["a"], np.zeros((1, DIM)))
    resumed.write(["c"], np.zeros((1, DIM)))
    resumed.finish()
    assert ItemVectorStore.open(tmp_path).ids.tolist() == ["a", "b", "c"]


@pytest.mark.parametrize("id_dtype, ids, match", [
    ("int64", ["a", "b"], "must be integers"),
    ("int64", [1.0, 2.0], "must be integers"),
    ("int64", np.array([1, 2**63], dtype=np.uint64), "does not fit in int64"),
    ("string", [1, 2], "must be strings"),
    ("string", np.array(["a", 3], dtype=object), "got 3"),
    ("int64", [[1, 2]], "must be 1-D"),
])
def test_ids_of_the_wrong_kind_are_refused(tmp_path, id_dtype, ids, match):
    writer = new_writer(tmp_path, 1, id_dtype=id_dtype)
    with pytest.raises(DataError, match=match):
        writer.write(ids, np.zeros((len(ids), DIM)))


def test_bytes_and_object_string_ids_are_stored_as_unicode(tmp_path):
    writer = new_writer(tmp_path, 1, id_dtype="string")
    writer.write(np.array([b"a", b"\xc3\xa9"]), np.zeros((2, DIM)))
    writer.write(np.array(["long-id", b"z"], dtype=object), np.ones((2, DIM)))
    writer.finish()
    store = ItemVectorStore.open(tmp_path)
    assert store.ids.dtype.kind == "U" and store.ids.tolist() == ["a", "é", "long-id", "z"]
    np.testing.assert_array_equal(store.lookup(["z", "é"]), [[1.0] * DIM, [0.0] * DIM])


def test_finish_without_items_is_refused(tmp_path):
    writer = new_writer(tmp_path, 1)
    writer.write([], np.zeros((0, DIM)))  # an empty chunk writes nothing
    with pytest.raises(ExportError, match="no items were written for model version 1"):
        writer.finish()
    assert ItemVectorStore.versions(tmp_path) == []


# ----------------------------------------------------------------------------- reading errors


def test_unknown_id_in_lookup_is_named(tmp_path):
    ids, vectors = catalog(10)
    write_store(tmp_path, 1, ids, vectors)
    store = ItemVectorStore.open(tmp_path)
    with pytest.raises(DataError, match=r"unknown item id 5 \(2 of 3 ids .*\[5, 99999999\]"):
        store.lookup([int(ids[0]), 5, 99999999])
    with pytest.raises(DataError, match="must be integers"):
        store.lookup(["item-1"])


def test_unknown_version_lists_the_available_ones(tmp_path):
    ids, vectors = catalog(10)
    write_store(tmp_path, 1, ids, vectors)
    write_store(tmp_path, 3, ids, vectors)
    new_writer(tmp_path, 4).write(ids, vectors)
    with pytest.raises(ExportError, match=r"model version 2 is not in .*available versions: \[1, 3\]"):
        ItemVectorStore.open(tmp_path, version=2)
    with pytest.raises(ExportError, match=r"version 4 .*unfinished.*\.partial-4-fp4.*available versions: \[1, 3\]"):
        ItemVectorStore.open(tmp_path, version=4)


def test_empty_store_is_refused(tmp_path):
    with pytest.raises(ExportError, match="no complete model version.*does not exist"):
        ItemVectorStore.open(tmp_path / "nowhere")
    ids, vectors = catalog(10)
    new_writer(tmp_path, 1).write(ids, vectors)  # only a partial write
    with pytest.raises(ExportError, match=f"{tmp_path}: no complete model version"):
        ItemVectorStore.open(tmp_path)


def test_version_whose_files_disagree_with_the_manifest_is_refused(tmp_path):
    ids, vectors = catalog(10)
    write_store(tmp_path, 1, ids, vectors)
    manifest_path = tmp_path / key(1) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(dict(manifest, count=11)))
    with pytest.raises(ExportError, match="expected 11 ids"):
        ItemVectorStore.open(tmp_path)


def test_importing_the_store_does_not_import_tensorflow():
    code = "import sys, serving.item_store; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False"

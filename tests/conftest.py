"""Shared fixtures: spec files under tests/specs/, a 3,000-row slice of the real KuaiRand data and a small model
trained on it (once per session, shared by every test that only reads it, in every pytest-xdist worker)."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import fcntl
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.local_servers import RedisServer, ServiceProcess
from serving.item_store.embed import embed_items
from serving.onnx.export import export_onnx
from serving.savedmodel.export import export_model
from serving.savedmodel.prune import PruneRules
from trainer.cli import main
from trainer.data.datasets.kuairand import convert_kuairand
from trainer.data.datasets.kuairand_items import kuairand_item_table
from trainer.spec import Spec, load_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUAIRAND_SPEC = os.path.join(REPO, "feature_specs", "kuairand.yaml")
SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")
# The `trained_small` model's --set overrides of the KuaiRand spec's config.
SMALL_MODEL_OVERRIDES = ["training.batch_size=256", "training.epochs=1", "training.progress=false",
                         "training.checkpoint_every=6", "training.eval_every=6", "model.ftrl.l1=0.01",
                         "model.student.dual_augmented.enabled=true", "model.student.user_tower=[32,16]",
                         "model.student.item_tower=[32,16]", "model.teacher.expert_layers=[32]",
                         "model.teacher.task_tower=[16]", "model.id_dropout=0",
                         "model.id_dropout_tables={video: 0.1}"]


# scripts/test.sh runs the suite in two pytest-xdist workers with `--dist loadfile`: a module's tests run in one
# worker, so that its module fixtures are built once (test_service.py's Redis and service among them); the
# modules known to take longest are handed out first (test_service first: it builds the shared trained model and
# exports, which test_export waits for; test_model and test_input need none of them, so the other worker runs them
# meanwhile) (the workers take modules in collection order), so that no
# long one is left for the end (`--no-loadscope-reorder`: otherwise pytest-xdist hands out the modules with the
# most tests first). (`--dist loadgroup` does not group on pytest 9.2 with pytest-xdist 3.8: the
# workers never see the option, so tests would run one by one wherever a worker is free.)
LONGEST_FIRST = ("test_service", "test_model", "test_input", "test_export", "test_api", "test_warm_start",
                 "test_parameter_servers",
                 "test_training_job", "test_quantize", "test_plugins", "test_parquet", "test_evaluation", "test_task",
                 "test_serving_input", "test_kuairand_conversion", "test_model_dir_input", "test_convert",
                 "test_validation_split", "test_hostile_input", "test_onnx_export", "test_features", "test_synthetic")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))  # stable: collection order otherwise


def built_once(tmp_path_factory, worker_id: str, name: str, build: Callable[[Path], object]):
    """build(folder) run once per test session, even with several pytest-xdist workers: the first worker to
    ask builds it under a lock in the session's shared temporary folder and pickles its value; the others wait
    for it and read that value. Fixtures built this way are read, never written, by the tests."""
    if worker_id == "master":  # not under xdist
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / "shared"
    root.mkdir(exist_ok=True)
    done = root / f"{name}.pickle"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if done.exists():
            return pickle.loads(done.read_bytes())
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
        folder.mkdir()
        value = build(folder)
        written = root / f"{name}.pickle.tmp"
        written.write_bytes(pickle.dumps(value))
        os.replace(written, done)
        return value


def spec_text(name: str) -> str:
    """The text of tests/specs/<name>.yaml (tests write edited copies of it to see how errors are reported)."""
    with open(os.path.join(SPECS, f"{name}.yaml"), encoding="utf-8") as fh:
        return fh.read()


@pytest.fixture(scope="session")
def kuairand_slice(tmp_path_factory, worker_id) -> str:
    """The folder of a 3,000-row conversion (one shard per date)."""
    def build(out: Path) -> str:
        convert_kuairand(os.path.join(REPO, "data", "kuairand"), str(out), shards_per_date=1, max_rows=3000)
        return str(out)

    return built_once(tmp_path_factory, worker_id, "kuairand_slice", build)


@pytest.fixture(scope="session")
def kuairand_heldout(tmp_path_factory, worker_id) -> str:
    """A data glob of the log's last 3,000 impressions: all of 2022-04-30, after every training slice."""
    def build(out: Path) -> str:
        convert_kuairand(os.path.join(REPO, "data", "kuairand"), str(out), shards_per_date=1, max_rows=3000,
                         last=True)
        return os.path.join(str(out), "date=*", "*.tfrecord.gz")

    return built_once(tmp_path_factory, worker_id, "kuairand_heldout", build)


@pytest.fixture(scope="session")
def spec() -> Spec:
    """The KuaiRand spec (a test module may define its own `spec`)."""
    return load_spec(KUAIRAND_SPEC)


@pytest.fixture(scope="session")
def trained_small(kuairand_slice, tmp_path_factory, worker_id) -> tuple[str, str]:
    """(model dir, data glob) of a small joint model trained one epoch (12 steps) on the slice.

    FTRL L1 0.01 leaves kept, all-zero and never-updated rows (a strong L1 would zero every row of so short
    a run); dual augmented vectors add augment tables; checkpoints at steps 6 and 12. Id dropout on the video
    table only: its OOV row is trained, the user table's never is."""
    data = os.path.join(kuairand_slice, "date=*", "*.tfrecord.gz")

    def build(folder: Path) -> tuple[str, str]:
        model_dir = str(folder / "model")
        args = [a for o in SMALL_MODEL_OVERRIDES for a in ("--set", o)]
        assert main(["train", KUAIRAND_SPEC, "--model-dir", model_dir, "--data", data, "--validation", data,
                     *args]) == 0
        return model_dir, data

    return built_once(tmp_path_factory, worker_id, "trained_small", build)


@pytest.fixture(scope="session")
def exported_small(trained_small, spec, tmp_path_factory, worker_id):
    """(ExportResult, data glob): the pruned SavedModel of `trained_small`, version 1 of its own base."""
    model_dir, data = trained_small

    def build(base: Path):
        return export_model(spec, model_dir, str(base), sample_data=data, log=lambda *_: None), data

    return built_once(tmp_path_factory, worker_id, "exported_small", build)


@pytest.fixture(scope="session")
def exported_student_small(trained_small, spec, tmp_path_factory, worker_id):
    """A student-only export of `trained_small`, as version 2 of its own base (the service swaps it in)."""
    model_dir, data = trained_small

    def build(base: Path):
        return export_model(spec, model_dir, str(base), version=2, sample_data=data, measure_unpruned=False,
                            student_only=True, log=lambda *_: None)

    return built_once(tmp_path_factory, worker_id, "exported_student_small", build)


# The lean export's opt-in pruning: rows read once in trained_small's one epoch, and rows of a small norm
LEAN_RULES = PruneRules(rows_below=2, norm_below=0.05)


@pytest.fixture(scope="session")
def exported_lean_small(trained_small, spec, tmp_path_factory):
    """The lean export of `trained_small`: int8 rows, and rows dropped by usage and norm (`LEAN_RULES`), every
    signature; version 1 of its own base."""
    model_dir, data = trained_small
    base = str(tmp_path_factory.mktemp("export_lean"))
    return export_model(spec, model_dir, base, sample_data=data, measure_unpruned=False, log=lambda *_: None,
                        embeddings="int8", rules=LEAN_RULES)


@pytest.fixture(scope="session")
def onnx_small(trained_small, spec, tmp_path_factory, worker_id):
    """The ONNX export of `trained_small`, as ONNX_BASE/1 (the layout `prerank serve --onnx` reads)."""
    model_dir, data = trained_small

    def build(folder: Path):
        return export_onnx(spec, model_dir, str(folder / "1"), data=data, log=lambda _: None)

    return built_once(tmp_path_factory, worker_id, "onnx_small", build)


@pytest.fixture(scope="session")
def item_table(tmp_path_factory, worker_id) -> str:
    """The KuaiRand item table as of 2022-04-30 (every video, with its ctr_prior attribute), as CSV."""
    def build(folder: Path) -> str:
        kuairand_item_table(os.path.join(REPO, "data", "kuairand"), str(folder / "items.csv"), 20220430)
        return str(folder / "items.csv")

    return built_once(tmp_path_factory, worker_id, "item_table", build)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server on a loopback port for the session (tests may stop and start it again)."""
    server = RedisServer(str(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service_small(exported_small, onnx_small, item_table, redis_server, tmp_path_factory):
    """`prerank serve` on an export base holding `exported_small` as version 1, its item vectors (the item
    table, with ctr_prior) in the session's Redis, the ONNX user tower, a hot cache of 4,000 items; polling
    the base every 0.5 s. Yields (ServiceProcess, export base). The service starts while the vectors are
    written (it waits for them, as it would in production)."""
    result, _ = exported_small
    base = tmp_path_factory.mktemp("served")
    os.symlink(result.path, base / "1")  # a base of its own: tests add versions to it
    onnx_base = os.path.dirname(onnx_small.path)
    service = ServiceProcess(str(base), redis_server.url, str(tmp_path_factory.mktemp("logs") / "service.log"),
                             extra=("--onnx", onnx_base, "--poll-seconds", "0.5", "--cache-items", "4000",
                                    "--max-candidates", "6000", "--max-body-bytes", "400000"))
    service.launch()
    try:
        embed_items(result.path, redis_server.url, item_table=item_table, attributes=("ctr_prior",),
                    reference_time="2022-04-30", progress=False)
        service.wait_ready()
        yield service, str(base)
    finally:
        service.stop()

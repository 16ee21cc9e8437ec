"""Load and check the TF Serving config files shipped in serving/tf_serving/.

Both files are text protos read by `tensorflow_model_server`: models.config
(a ModelServerConfig, `--model_config_file`) and batching_parameters.pbtxt (a
BatchingParameters, `--batching_parameters_file`). Parsing them here with the
same messages catches a typo before a deployment does; a malformed file raises
ConfigError naming the file, the line and what was expected.

The tensorflow-serving-api wheel ships ModelServerConfig but not
session_bundle_config_pb2, where BatchingParameters lives. When that module is
missing, BatchingParameters is rebuilt from its upstream definition
(tensorflow_serving/servables/tensorflow/session_bundle_config.proto, fields
1-7, the ones stable since TF Serving 1.x). Newer upstream fields
(large-batch splitting and later) are therefore rejected as unknown here.
"""
import re
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from google.protobuf.message import Message
from tensorflow_serving.config import model_server_config_pb2

from trainer.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent
MODELS_CONFIG = CONFIG_DIR / "models.config"
BATCHING_PARAMETERS = CONFIG_DIR / "batching_parameters.pbtxt"
PLATFORM = "tensorflow"

# BatchingParameters fields as upstream declares them: (name, number, type, wrapper message).
_BATCHING_FIELDS = (
    ("max_batch_size", 1, "TYPE_MESSAGE", "Int64Value"),
    ("batch_timeout_micros", 2, "TYPE_MESSAGE", "Int64Value"),
    ("max_enqueued_batches", 3, "TYPE_MESSAGE", "Int64Value"),
    ("num_batch_threads", 4, "TYPE_MESSAGE", "Int64Value"),
    ("thread_pool_name", 5, "TYPE_MESSAGE", "StringValue"),
    ("allowed_batch_sizes", 6, "TYPE_INT64", None),
    ("pad_variable_length_inputs", 7, "TYPE_BOOL", None),
)


def _mirror_batching_parameters() -> type[Message]:
    """BatchingParameters built from _BATCHING_FIELDS in a private descriptor pool."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="prerank/session_bundle_config_mirror.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = proto.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for name, number, kind, wrapper in _BATCHING_FIELDS:
        field = message.field.add(name=name, number=number, type=getattr(F, kind))
        field.label = F.LABEL_REPEATED if name == "allowed_batch_sizes" else F.LABEL_OPTIONAL
        if wrapper:
            field.type_name = f".google.protobuf.{wrapper}"
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


try:  # the real message, when some TF Serving build provides it
    from tensorflow_serving.servables.tensorflow.session_bundle_config_pb2 import BatchingParameters
except ImportError:
    BatchingParameters = _mirror_batching_parameters()

def _config_error(message: str) -> ConfigError:
    """A ConfigError from "where: what" (where: the file, with line and column if known)."""
    where, _, what = message.partition(": ")
    return ConfigError.single(where, "", what)


_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')


def _expected(message: Message, error: str) -> str:
    """What the parser wanted: for an unknown field, the fields the message has."""
    match = _UNKNOWN_FIELD.search(error)
    if not match:
        return f"a valid {message.DESCRIPTOR.full_name} text proto"
    try:
        descriptor = message.DESCRIPTOR.file.pool.FindMessageTypeByName(match.group(1))
    except KeyError:
        return f"a field of {match.group(1)}"
    return f"one of {', '.join(sorted(descriptor.fields_by_name))}"


def _parse(path: Path | str, message: Message) -> Message:
    """Parse the text proto at `path` into `message`; ConfigError names file, line and expectation."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _config_error(f"{path}: cannot read {message.DESCRIPTOR.name} text proto: {e}") from e
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as e:
        detail = re.sub(r"^\d+:\d+ : ", "", str(e)).rstrip(".")
        where = f"{path}:{e.GetLine()}:{e.GetColumn()}" if e.GetLine() else str(path)
        raise _config_error(f"{where}: {detail}; expected {_expected(message, detail)}") from e


def load_model_server_config(path: Path | str = MODELS_CONFIG) -> model_server_config_pb2.ModelServerConfig:
    """Parse a ModelServerConfig text proto (the file given to --model_config_file)."""
    return _parse(path, model_server_config_pb2.ModelServerConfig())


def load_batching_parameters(path: Path | str = BATCHING_PARAMETERS) -> Message:
    """Parse a BatchingParameters text proto (the file given to --batching_parameters_file)."""
    return _parse(path, BatchingParameters())


def _label_problem(model: model_server_config_pb2.ModelConfig) -> str | None:
    """Why the model's version labels are unsafe, or None.

    A label must name a version the policy keeps loaded, or requests using it
    fail. Only a `specific` policy says which versions those are; under
    `latest` a fixed label falls out of the window after a few exports.
    """
    if not model.version_labels:
        return None
    policy = model.model_version_policy
    if policy.WhichOneof("policy_choice") != "specific":
        return "version_labels need model_version_policy { specific { versions: ... } }, which names the versions kept"
    kept = set(policy.specific.versions)
    for label, version in sorted(model.version_labels.items()):
        if version not in kept:
            return f"label {label!r} points at version {version}, which the policy does not keep ({sorted(kept)})"
    return None


def check_model_server_config(config: model_server_config_pb2.ModelServerConfig, source: str = "models.config") -> None:
    """Raise ConfigError if a model cannot be served as configured.

    Checks each model of model_config_list: a name (unique), an absolute
    base_path or a URI, platform `tensorflow`, a version policy that keeps at least one
    version, and version labels that point at kept versions.
    """
    if config.WhichOneof("config") != "model_config_list" or not config.model_config_list.config:
        raise _config_error(f"{source}: expected model_config_list with at least one config {{ ... }}")
    seen: set[str] = set()
    for i, model in enumerate(config.model_config_list.config):
        where = f"{source}: model_config_list.config[{i}]"
        if not model.name:
            raise _config_error(f"{where}: name is empty; expected the model name clients send")
        where = f"{source}: model {model.name!r}"
        if model.name in seen:
            raise _config_error(f"{where}: listed twice; expected each name once")
        seen.add(model.name)
        if not (model.base_path.startswith("/") or "://" in model.base_path):
            raise _config_error(
                f"{where}: base_path {model.base_path!r}; expected an absolute path or URI (s3://, gs://) "
                "holding <version>/ dirs"
            )
        if model.model_platform != PLATFORM:
            raise _config_error(f"{where}: model_platform {model.model_platform!r}; expected {PLATFORM!r}")
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions:
            raise _config_error(f"{where}: model_version_policy.specific lists no versions; expected at least one")
        problem = _label_problem(model)
        if problem:
            raise _config_error(f"{where}: {problem}")


def _ascending(values: Iterable[int]) -> bool:
    values = list(values)
    return all(a < b for a, b in zip(values, values[1:]))


def check_batching_parameters(params: Message, source: str = "batching_parameters.pbtxt") -> None:
    """Raise ConfigError for values TF Serving would refuse or that cannot batch.

    The sizes, timeout, queue and threads must be set (a missing field silently
    takes TF Serving's default) and positive, timeout excepted (>= 0).
    allowed_batch_sizes, if given, must ascend and end at max_batch_size, as
    TF Serving requires when it wraps a session for batching.
    """
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if not params.HasField(name):
            raise _config_error(f"{source}: {name} is not set; expected {name} {{ value: N }}")
        value = getattr(params, name).value
        if value < 0 or (value == 0 and name != "batch_timeout_micros"):
            raise _config_error(f"{source}: {name} is {value}; expected a positive number")
    sizes = list(params.allowed_batch_sizes)
    if sizes and (not _ascending(sizes) or sizes[0] <= 0 or sizes[-1] != params.max_batch_size.value):
        raise _config_error(
            f"{source}: allowed_batch_sizes {sizes}; expected positive ascending sizes ending at "
            f"max_batch_size ({params.max_batch_size.value})"
        )

"""`prerank embed-items`: the vector of every catalog item, through an export's item_embedding signature.

The catalog is the distinct items of the impressions (`trainer.data.catalog.build_catalog`: each
item id with its item columns), or an item table given with `items` (one row per item, items never
shown included; it may carry numeric attributes stored beside the vectors, for the scoring service's
tiers). Vectors go to a versioned store, a directory (`serving.item_store.writer`) or Redis
(`serving.item_store.redis_store`), keyed by the export's model version and fingerprint, so a store never
mixes vectors of two exports; a killed run resumes from its last whole part. Once a version is complete,
the retention rule keeps the `keep` newest versions of the store and removes the others.
"""
import os
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from tqdm import tqdm

from serving.item_store.reader import remove_old_versions
from serving.item_store.redis_store import RedisStoreWriter, is_redis, remove_old_redis_versions
from serving.item_store.writer import StoreWriter
from serving.savedmodel.layout import manifest_fingerprint
from serving.savedmodel.opening import open_export
from serving.savedmodel.requests import call_signature
from serving.savedmodel.signatures import input_columns, serving_inputs
from trainer.data.catalog import ItemCatalog, build_catalog, item_table_catalog
from trainer.data.splits import every_split, resolve_data
from trainer.errors import ConfigError, ExportError
from trainer.spec.loader import load_spec
from trainer.spec.sides import id_feature as item_id_feature
from trainer.spec.types import Spec


@dataclass
class EmbeddedItems:
    store_path: str
    model_version: int
    items: int
    resumed_from: int  # items already in the store's partial write when this run started
    source: str  # where the catalog came from: "item table FILE" or "the impressions of FILES"
    fingerprint: str = ""
    removed: list[str] = field(default_factory=list)  # versions the retention rule removed


KEEP_VERSIONS = 3  # the retention rule's default: the newest 3 versions of a store are kept


def check_reference_time(text: str | None) -> str | None:
    """An ISO 8601 date or time (e.g. 2022-04-30 or 2022-04-30T00:00:00+00:00), returned as given."""
    if text is None:
        return None
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError.single("--reference-time", "", f"{text!r}: expected an ISO 8601 date or time, e.g. "
                                 "2022-04-30 or 2022-04-30T08:00:00+00:00") from None
    return text


def embed_catalog(item_embedding, spec: Spec, catalog: ItemCatalog, writer: StoreWriter, batch_size: int,
                  progress: bool = True) -> None:
    """Write the vectors of catalog items from `writer.next_offset` on, `batch_size` items a call."""
    columns = input_columns(spec, "item")
    start = writer.next_offset
    with tqdm(total=catalog.size, initial=start, unit="item", disable=not progress) as bar:
        for offset in range(start, catalog.size, batch_size):
            rows = slice(offset, min(offset + batch_size, catalog.size))
            chunk = {c.name: catalog.columns[c.name][rows] for c in columns}
            inputs = serving_inputs(chunk, columns)
            where = f"item_embedding on catalog items {rows.start}..{rows.stop - 1}"
            vectors = call_signature(item_embedding, inputs, where)["item_vector"]
            values = None
            if writer.attribute_names:
                values = np.stack([np.asarray(catalog.columns[a][rows]) for a in writer.attribute_names], axis=1)
            writer.write(catalog.ids[rows], vectors, offset=offset, attributes=values)
            bar.update(rows.stop - rows.start)


def embed_items(export_path: str, store_dir: str, data: str | list[str] | None = None, batch_size: int = 4096,
                progress: bool = True, item_table: str | list[str] | None = None, attributes: tuple[str, ...] = (),
                reference_time: str | None = None, keep: int = KEEP_VERSIONS) -> EmbeddedItems:
    """Embed a catalog with the export at `export_path` (a version directory or a base directory: its newest
    version) into `store_dir` (a directory, or redis://host:port/db).

    Args:
      data: impressions (globs) whose distinct items make the catalog (default: every split of the spec).
      item_table: instead, an item table (globs; `trainer.data.catalog.item_table_catalog`): one row per item with
        every column the item tower reads, e.g. the whole catalog, items never shown included.
      attributes: numeric columns of the item table stored beside the vectors (the service's tiers order
        a score band by one of them); only with an item table.
      reference_time: the time the item features hold for (ISO 8601; e.g. the day an item's age was computed
        for), recorded in the store: vectors are as fresh as it.
      batch_size: items per item_embedding call.
      keep: the retention rule: once written, the store keeps its `keep` newest versions.
    """
    if data and item_table:
        raise ExportError("give the catalog as impressions (data) or as an item table, not both")
    if attributes and not item_table:
        raise ConfigError.single("--attribute", "", "attributes are columns of an item table: give --items")
    reference_time = check_reference_time(reference_time)
    if keep < 1:
        raise ConfigError.single("--keep", "", f"expected at least 1 (the version being written), got {keep}")
    opened = open_export(export_path)  # a garbled or foreign export is refused before the store is touched
    export_dir, manifest, loaded = opened.path, opened.manifest, opened.loaded
    fingerprint = manifest_fingerprint(export_dir, manifest)
    spec = load_spec(manifest["spec"])
    if not item_table:
        data = data or every_split(spec, "train", "validation", "eval") \
            or resolve_data(None, spec, "train", "eval", purpose="data to build the item table from")
    if "item_embedding" not in loaded.signatures:
        raise ExportError(f"{export_dir}: the export has no item_embedding signature (a teacher-only model?)")
    item_embedding = loaded.signatures["item_embedding"]
    id_feature = spec.feature(item_id_feature(spec, "item"))
    dim = int(item_embedding.structured_outputs["item_vector"].shape[-1])
    if item_table:  # read and checked before the store is touched
        catalog = item_table_catalog(spec, item_table, id_feature.name, attributes=tuple(attributes))
        source = f"item table {' '.join([item_table] if isinstance(item_table, str) else item_table)}"
    else:
        catalog = build_catalog(spec, data, id_feature.name)
        source = f"the impressions of {' '.join([data] if isinstance(data, str) else data)}"
    kind = RedisStoreWriter if is_redis(store_dir) else StoreWriter
    writer = kind(store_dir, int(manifest["version"]), fingerprint=fingerprint, dim=dim,  # refuses a complete one
                  id_dtype="string" if id_feature.dtype == "string" else "int64",
                  export_dir=os.path.abspath(export_dir), id_column=id_feature.columns[0],
                  metadata={"data": data, "item_table": item_table, "checkpoint": manifest["checkpoint"]},
                  attributes=tuple(attributes), reference_time=reference_time)
    resumed = writer.next_offset
    embed_catalog(item_embedding, spec, catalog, writer, batch_size, progress)
    path = writer.finish()
    removed = remove_old_redis_versions(store_dir, keep) if is_redis(store_dir) else \
        remove_old_versions(store_dir, keep)
    return EmbeddedItems(str(path), int(manifest["version"]), catalog.size, resumed, source, fingerprint, removed)


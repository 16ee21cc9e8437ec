"""`prerank embed-items`: the vector of every catalog item, through an export's item_embedding signature.

The catalog is the distinct items of the impressions (`trainer.data.catalog.build_catalog`: each
item id with its item columns), or an item table given with `items` (one row per item, items never
shown included). Vectors go to a versioned store
(`serving.item_store.writer`) under the export's model version, so a store never mixes
vectors of two versions; a killed run resumes from its last whole part.
"""
import os
from dataclasses import dataclass

from tqdm import tqdm

from serving.item_store.writer import StoreWriter
from serving.savedmodel.opening import open_export
from serving.savedmodel.requests import call_signature
from serving.savedmodel.signatures import input_columns, serving_inputs
from trainer.data.catalog import ItemCatalog, build_catalog, item_table_catalog
from trainer.data.splits import every_split, resolve_data
from trainer.errors import ExportError
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
            writer.write(catalog.ids[rows], vectors, offset=offset)
            bar.update(rows.stop - rows.start)


def embed_items(export_path: str, store_dir: str, data: str | list[str] | None = None, batch_size: int = 4096,
                progress: bool = True, item_table: str | list[str] | None = None) -> EmbeddedItems:
    """Embed a catalog with the export at `export_path` (a version directory or a base directory: its newest
    version) into `store_dir`.

    Args:
      data: impressions (globs) whose distinct items make the catalog (default: every split of the spec).
      item_table: instead, an item table (globs; `trainer.data.catalog.item_table_catalog`): one row per item with
        every column the item tower reads, e.g. the whole catalog, items never shown included.
      batch_size: items per item_embedding call.
    """
    if data and item_table:
        raise ExportError("give the catalog as impressions (data) or as an item table, not both")
    opened = open_export(export_path)  # a garbled or foreign export is refused before the store is touched
    export_dir, manifest, loaded = opened.path, opened.manifest, opened.loaded
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
        catalog = item_table_catalog(spec, item_table, id_feature.name)
        source = f"item table {' '.join([item_table] if isinstance(item_table, str) else item_table)}"
    else:
        catalog = build_catalog(spec, data, id_feature.name)
        source = f"the impressions of {' '.join([data] if isinstance(data, str) else data)}"
    writer = StoreWriter(store_dir, int(manifest["version"]), dim=dim,  # refuses a complete version first
                         id_dtype="string" if id_feature.dtype == "string" else "int64",
                         export_dir=os.path.abspath(export_dir), id_column=id_feature.columns[0],
                         metadata={"data": data, "item_table": item_table, "checkpoint": manifest["checkpoint"]})
    resumed = writer.next_offset
    embed_catalog(item_embedding, spec, catalog, writer, batch_size, progress)
    path = writer.finish()
    return EmbeddedItems(str(path), int(manifest["version"]), catalog.size, resumed, source)


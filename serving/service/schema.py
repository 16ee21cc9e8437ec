"""The service's request and response models, derived from the spec (never listed by hand).

A request:

    {"user": {<user and context columns of the spec>: value, ...},
     "candidates": [item id, ...],                       # 1 .. max_candidates
     "item_features": [{<item columns>: value, ...}],    # optional: candidates the store may lack
     "k": 200,                                           # optional (server default)
     "strategy": {"name": "top_k"}                       # or threshold / tiers; optional (server default)
    }

Values are typed as the spec types the column: an int64 id a JSON integer within int64 (strings are not
converted), a string id a JSON string, a number a JSON number (finite), a sequence a list of ids (no
padding), a dense vector a list of exactly dim numbers. A column whose feature declares a `default` may be left out.
No field names a file, a model path or a store key.
"""
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, create_model

from trainer.spec.columns import RawColumn

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


INT64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]  # a JSON integer that fits the model's int64


def column_type(column: RawColumn) -> Any:
    """The pydantic type of one raw column's value."""
    scalar = {"int64": INT64, "string": StrictStr, "float32": Union[StrictFloat, StrictInt]}[column.dtype]
    if column.shape == "list":
        return list[scalar]
    if column.shape == "vector":
        return Annotated[list[Union[StrictFloat, StrictInt]], Field(min_length=column.length,
                                                                     max_length=column.length)]
    return scalar


def features_model(name: str, columns: list[RawColumn], doc: str) -> type[BaseModel]:
    """A model with one field per column: required unless the column has a declared default."""
    fields = {}
    for c in columns:
        description = f"{c.dtype} {c.shape}; read by {c.read_by}"
        if c.default is None:
            fields[c.name] = (column_type(c), Field(description=description))
        else:
            fields[c.name] = (column_type(c), Field(default=c.default, description=f"{description}; default "
                                                                                  f"{c.default!r}"))
    return create_model(name, __config__=STRICT, __doc__=doc, **fields)


class TopK(BaseModel):
    """The K highest scores, best first."""

    model_config = STRICT
    name: Literal["top_k"]


class Threshold(BaseModel):
    """Every candidate scoring at least `min_score`, best first, at most K."""

    model_config = STRICT
    name: Literal["threshold"]
    min_score: float = Field(ge=0.0, le=1.0, description="the lowest score kept")


class Tiers(BaseModel):
    """Score bands from the top: band 0 holds scores >= bands[0], band 1 scores in [bands[1], bands[0]), ...,
    the last band the rest. Within a band candidates are ordered by `attribute` (an item attribute of the
    store, higher first; score breaks ties); bands are taken from the top until K candidates are kept."""

    model_config = STRICT
    name: Literal["tiers"]
    bands: list[float] = Field(min_length=1, max_length=16, description="descending lower score bounds of the bands")
    attribute: str = Field(description="the item attribute that orders a band (e.g. ctr_prior)")


Strategy = Annotated[Union[TopK, Threshold, Tiers], Field(discriminator="name")]
STRATEGIES = ("top_k", "threshold", "tiers")


def request_model(user_columns: list[RawColumn], item_columns: list[RawColumn], id_column: RawColumn,
                  max_candidates: int) -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    """(ScoreRequest, UserFeatures, ItemFeatures) for the spec's columns."""
    user = features_model("UserFeatures", user_columns, "One user's raw user and context columns.")
    item = features_model("ItemFeatures", item_columns, "One candidate's raw item columns, its id included.")
    # int64 candidate ids are bounded when they become an int64 array (`Scorer.score`): a bound checked per id
    # costs pydantic about 0.12 ms per 5,000 ids
    ids = list[StrictInt] if id_column.dtype == "int64" else list[column_type(id_column)]
    request = create_model(
        "ScoreRequest", __config__=STRICT, __doc__="Score one user's candidates and keep K of them.",
        user=(user, Field(description="the user's raw features")),
        candidates=(Annotated[ids, Field(min_length=1, max_length=max_candidates)],
                    Field(description=f"candidate item ids, 1 to {max_candidates}")),
        item_features=(Annotated[list[item], Field(max_length=max_candidates)] | None,
                       Field(default=None, description="raw item features of candidates that may be missing "
                                                       "from the item store (used only for those)")),
        k=(int | None, Field(default=None, gt=0, description="how many to keep (default: the server's)")),
        strategy=(Strategy | None, Field(default=None, description="how to cut (default: the server's)")))
    return request, user, item


class Unscored(BaseModel):
    id: Any
    reason: str


class ScoreResponse(BaseModel):
    """The kept candidates, best first, and the ones that could not be scored."""

    ids: list[Any] = Field(description="kept candidate ids, in order")
    scores: list[float] = Field(description="their scores, sigmoid(user_vector . item_vector + bias)")
    model_version: int
    fingerprint: str = Field(description="the export's fingerprint: the vectors scored are this export's")
    strategy: str
    k: int
    unscored: list[Unscored] = Field(description="candidates not scored, with the reason")
    candidates: int
    scored: int


class ErrorResponse(BaseModel):
    error: str
    fields: list[dict] | None = None

"""Which user histories the teacher's target attention pools against which candidate feature.

A user-side sequence feature is attended by every item-side categorical feature that reads the same
embedding table (on KuaiRand, watch_seq and video_id share `video`). Derived from the spec, never listed.
"""
from dataclasses import dataclass

from trainer.spec.types import Spec


@dataclass(frozen=True)
class AttentionPair:
    """A user history and the candidate feature it is pooled against."""

    sequence: str  # a user-side sequence feature
    target: str  # an item-side categorical feature on the same table

    @property
    def field(self) -> str:
        """The name of the attended field among the teacher's inputs."""
        return f"{self.sequence}@{self.target}"


def attention_pairs(spec: Spec) -> list[AttentionPair]:
    """Every (user sequence, item categorical) pair of features sharing an embedding table."""
    items = [f for f in spec.features_on("item") if f.kind == "categorical" and f.embedding is not None]
    return [AttentionPair(s.name, t.name)
            for s in spec.features_on("user") if s.kind == "sequence" and s.embedding is not None
            for t in items if t.embedding.table == s.embedding.table]

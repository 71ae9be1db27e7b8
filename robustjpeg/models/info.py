"""ModelInfo: what the suite knows of a model besides its weights, from loading to the run folder's run.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class ModelInfo:
    """A model's label and identity, where it came from and how it takes its input.

    name labels it in reports and history; sha256 (of the file, or of in-memory weights) is its identity. Every
    other field is None where it does not apply. defended: meant to be robust, so check 13 expects no collapse.
    """

    name: str
    sha256: str | None = None
    source: str | None = None
    format: str = "in-memory"
    arch: str | None = None
    spec: dict | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    mean: list | None = None
    std: list | None = None
    input_size: list | None = None
    preprocess: dict | None = None
    preprocess_defaults: dict | None = None
    resized_from: list | None = None
    defended: bool = False
    complete: bool | None = None
    epoch: int | None = None
    jpeg_tables: dict | None = None  # the first JPEG layer's steps as evaluated: {luma: 8x8, chroma: 8x8 or None}
    jpeg_start_tables: list | None = None  # the steps its training started from, [T][8][8] (our checkpoints)

    def to_dict(self) -> dict[str, Any]:
        """The plain-JSON form run.json stores under "model" (every field, None included)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Read back a stored record; keys this version does not know are left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

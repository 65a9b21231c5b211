"""ShapesBench cases: one ShapesWorld edit per seed, with everything a metric needs.

    case = make_case(10_000_123, "recolor")
    case.input_image                       # uint8 (size, size, 3): what a method edits
    case.source_image, case.target_image   # uint8 (64, 64, 3): the input and the ground truth
    case.region                            # bool (64, 64): where source and target differ
    case.add, case.remove                  # the edit as SEGA concepts

Deterministic per seed: the same (seed, kind) always gives the same case, on any machine.
`size`: pixels a side of the input, a model's native size; every figure is read at world.SIZE
(64) whatever it is, the edited image box-resized to it as the judge reads it, and the source
and target are the renders at `size` so resized, so that a perfect edit scores as one at any size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from retouch.shapes import world
from retouch.shapes.judge import at_judge_size
from retouch.shapes.world import EDIT_KINDS, Edit


@dataclass(frozen=True)
class Case:
    """One benchmark edit: a ShapesWorld Edit and the ground truth derived from it."""

    seed: int
    kind: str
    edit: Edit
    size: int = world.SIZE  # pixels a side of the input (the model's native size)

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.seed}"

    @property
    def source_caption(self) -> str:
        return self.edit.source_caption

    @property
    def target_caption(self) -> str:
        return self.edit.target_caption

    @property
    def add(self) -> tuple[str, ...]:
        return self.edit.add

    @property
    def remove(self) -> tuple[str, ...]:
        return self.edit.remove

    @cached_property
    def input_image(self) -> np.ndarray:
        """The input a method edits: uint8 (size, size, 3)."""
        return world.render(self.edit.source, self.size)

    @cached_property
    def source_image(self) -> np.ndarray:
        """The input as it is measured: uint8 (64, 64, 3)."""
        return at_judge_size(self.input_image)

    @cached_property
    def target_image(self) -> np.ndarray:
        """The ground-truth result: uint8 (64, 64, 3)."""
        return at_judge_size(world.render(self.edit.target, self.size))

    @cached_property
    def region(self) -> np.ndarray:
        """The ground-truth changed region: bool (64, 64), True where source and target differ."""
        return self.edit.changed_region()

    def judged_region(
        self,
    ) -> tuple[np.ndarray, tuple[str | None, str | None], tuple[str | None, str | None]]:
        """(region bool (64, 64), expected read, source read) for the judge's edit-success read.

        recolor/reshape: the union of the object's old and new masks, expecting the new
        (shape, colour); remove: the old object's mask, expecting (None, None); add: the new
        object's mask, expecting it. Background edits are read with the background head instead.
        """
        e = self.edit
        if self.kind in ("recolor", "reshape"):
            new = e.target.objects[e.index]
            region = world.masks(e.source)[e.index] | world.masks(e.target)[e.index]
            return region, (new.shape, new.color), self.read_before
        if self.kind == "remove":
            return world.masks(e.source)[e.index], (None, None), self.read_before
        if self.kind == "add":
            i = next(i for i, o in enumerate(e.target.objects) if o not in e.source.objects)
            new = e.target.objects[i]
            return world.masks(e.target)[i], (new.shape, new.color), self.read_before
        raise ValueError(f"{self.kind} edits are judged on the background, not a region")

    @cached_property
    def read_before(self) -> tuple[str | None, str | None] | str:
        """What the judge reads where the edit should be, before it: the source's (shape, colour)
        in the judged region (nothing for an addition), or the source background's name."""
        e = self.edit
        if self.kind == "background":
            return e.source.background
        if e.index is None:  # an addition: nothing was there
            return (None, None)
        old = e.source.objects[e.index]
        return (old.shape, old.color)

    @cached_property
    def kept(self) -> tuple[world.Obj, ...]:
        """Every object of the source the edit must leave alone."""
        e = self.edit
        edited = e.source.objects[e.index] if e.index is not None else None
        return tuple(o for o in e.source.objects if o != edited)

    @cached_property
    def others(self) -> frozenset[tuple[str, str]]:
        """The (shape, colour) of every object the edit must leave alone."""
        return frozenset((o.shape, o.color) for o in self.kept)

    def untouched(self) -> list[tuple[world.Obj, np.ndarray]]:
        """Every object the edit must leave alone, with its ground-truth mask bool (64, 64)."""
        ms = world.masks(self.edit.source)
        return [(o, m) for o, m in zip(self.edit.source.objects, ms) if o in self.kept]


def make_case(seed: int, kind: str, size: int = world.SIZE) -> Case:
    """The case of (seed, kind): a deterministic ShapesWorld edit."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return Case(int(seed), kind, world.sample_edit(int(seed), kind), size)


def check_kinds(kinds: Sequence[str]) -> None:
    """ValueError unless `kinds` is a non-empty list of ShapesWorld edit kinds."""
    unknown = [k for k in kinds if k not in EDIT_KINDS]
    if unknown or not kinds:
        raise ValueError(
            f"unknown edit kind {unknown[0] if unknown else ''!r}; expected some of {EDIT_KINDS}"
        )


def make_cases(seed: int, n: int, kinds: Sequence[str] = EDIT_KINDS, size: int = world.SIZE) -> list[Case]:
    """n cases: case i is kind kinds[i mod len(kinds)] on scene seed `seed + i`."""
    check_kinds(kinds)
    return [make_case(seed + i, kinds[i % len(kinds)], size) for i in range(n)]

"""ShapesWorld: procedurally rendered scenes of coloured shapes with captions and ground-truth masks.

A scene is plain data (a background colour and 1 to 3 non-overlapping objects). Rendering is
deterministic and anti-aliased (supersampled, then box-downsampled). Every scene has a caption
from a small grammar, and every edit of a scene gives the ground-truth target image and the
ground-truth changed region.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 190),
    "orange": (250, 130, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
SIZE = 64  # rendered images are SIZE x SIZE RGB
SUPERSAMPLE = 4
MIN_RADIUS, MAX_RADIUS = 7.0, 13.0
EDIT_KINDS: tuple[str, ...] = ("recolor", "reshape", "remove", "add", "background")
HELD_OUT_SEED = 10_000_000  # scenes used for any evaluation start here; training stays below
# How far each shape reaches from its centre, as a multiple of its radius: a square's corner lies
# at 0.82·√2 r, a diamond's tip at 1.08 r. Spacing uses this, so no two objects ever touch.
EXTENT: dict[str, float] = {"circle": 1.0, "square": 0.82 * 2**0.5, "triangle": 1.0, "diamond": 1.08}


@dataclass(frozen=True)
class Obj:
    """One object: its shape, colour, centre (x, y) in pixels and radius in pixels."""

    shape: str
    color: str
    x: float
    y: float
    r: float

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def extent(self) -> float:
        """The radius of the smallest centred circle that holds the shape, in pixels."""
        return self.r * EXTENT[self.shape]


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(d["background"], tuple(Obj(**o) for o in d["objects"]))


def _fits(obj: Obj, others: tuple[Obj, ...] | list[Obj], gap: float = 3.0) -> bool:
    margin, e = 1.0, obj.extent
    if not (margin + e <= obj.x <= SIZE - margin - e):
        return False
    if not (margin + e <= obj.y <= SIZE - margin - e):
        return False
    return all(np.hypot(obj.x - o.x, obj.y - o.y) >= e + o.extent + gap for o in others)


def sample_object(rng: np.random.Generator, others=(), tries: int = 200, **fixed) -> Obj | None:
    """A random object that does not overlap `others`; keyword arguments fix its fields."""
    for _ in range(tries):
        r = fixed.get("r", rng.uniform(MIN_RADIUS, MAX_RADIUS))
        shape = fixed.get("shape", SHAPES[rng.integers(len(SHAPES))])
        e = r * EXTENT[shape]
        obj = Obj(
            shape=shape,
            color=fixed.get("color", list(COLORS)[rng.integers(len(COLORS))]),
            x=float(rng.uniform(e + 1, SIZE - 1 - e)),
            y=float(rng.uniform(e + 1, SIZE - 1 - e)),
            r=float(r),
        )
        if _fits(obj, others):
            return obj
    return None


def sample_scene(seed: int, n_objects: int | None = None) -> Scene:
    """The scene of a seed: deterministic, 1 to 3 objects (or exactly `n_objects`)."""
    rng = np.random.default_rng([seed, 0x5EA])
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    objects: list[Obj] = []
    while len(objects) < n:
        obj = sample_object(rng, objects)
        if obj is None:  # crowded: start over with fresh positions
            objects = []
            continue
        objects.append(obj)
    return Scene(background, tuple(sorted(objects, key=lambda o: (o.x, o.y))))


def object_coverage(obj: Obj, size: int = SIZE, ss: int = SUPERSAMPLE) -> np.ndarray:
    """Anti-aliased coverage of one object in [0, 1]: float32 (size, size). The scene's coordinates
    are SIZE-pixel ones: at another `size` the same scene is drawn finer or coarser."""
    n = size * ss
    c = (np.arange(n, dtype=np.float32) + 0.5) / ss * (SIZE / size)  # supersample centres, in SIZE px
    dx = c[None, :] - obj.x  # (1, n)
    dy = c[:, None] - obj.y  # (n, 1)
    if obj.shape == "circle":
        inside = dx**2 + dy**2 <= obj.r**2
    elif obj.shape == "square":
        h = obj.r * 0.82
        inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    elif obj.shape == "diamond":
        inside = np.abs(dx) + np.abs(dy) <= obj.r * 1.08
    elif obj.shape == "triangle":
        # equilateral, pointing up, inscribed in the circle of radius r
        top, base = -obj.r, obj.r * 0.5
        half_width = (dy - top) / (base - top) * obj.r * np.sqrt(3) / 2
        inside = (dy >= top) & (dy <= base) & (np.abs(dx) <= half_width)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")
    inside = np.broadcast_to(inside, (n, n)).astype(np.float32)
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))


def render(scene: Scene, size: int = SIZE) -> np.ndarray:
    """The scene as uint8 RGB (size, size, 3): the same scene at any size (`object_coverage`)."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        a = object_coverage(obj, size)[..., None]
        img = img * (1 - a) + np.asarray(COLORS[obj.color], np.float32) * a
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def masks(scene: Scene, size: int = SIZE) -> np.ndarray:
    """Ground-truth binary mask per object: bool (n_objects, size, size), coverage >= 0.5."""
    if not scene.objects:
        return np.zeros((0, size, size), bool)
    return np.stack([object_coverage(o, size) >= 0.5 for o in scene.objects])


def _object_list(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def article(phrase: str) -> str:
    """'a red circle', 'an orange square'."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def caption(scene: Scene) -> str:
    """'a red circle and an orange square on a white background' (objects left to right)."""
    phrases = [article(o.phrase) for o in scene.objects]
    if not phrases:
        return article(f"{scene.background} background")
    return f"{_object_list(phrases)} on {article(scene.background)} background"


def training_caption(
    scene: Scene, rng: np.random.Generator, whole: float = 0.4, bare_background: float = 1 / 6
) -> str:
    """A caption as web captions are: whole, partial (some objects, any order), or a bare concept.

    `whole` (40 %): the whole caption. Of the rest, two thirds: a random subset of the objects in
    random order, each phrase with or without its article, with or without the background phrase;
    one third: one bare concept ("red circle", or "white background" for a share `bare_background`
    of them, one in six by default). Partial captions never name what the image does not hold, so
    a concept's noise prediction points at that concept; and a caption in the whole caption's form
    (articles and the background phrase) always names every object, so that form keeps meaning
    "exactly these objects".
    """
    u = rng.random()
    if u < whole or not scene.objects:
        return caption(scene)
    bg = f"{scene.background} background"
    if u >= whole + (1 - whole) * 2 / 3:
        if rng.random() < bare_background:
            return bg
        return scene.objects[rng.integers(len(scene.objects))].phrase
    k = int(rng.integers(1, len(scene.objects) + 1))
    chosen = [scene.objects[i] for i in rng.permutation(len(scene.objects))[:k]]
    with_article, with_bg = rng.random() < 0.5, rng.random() < 0.5
    if with_article and with_bg and k < len(scene.objects):  # the whole form, yet not every object
        with_article, with_bg = rng.permutation([True, False])
    phrases = [article(o.phrase) if with_article else o.phrase for o in chosen]
    text = _object_list(phrases)
    if with_bg:
        text += " on " + (article(bg) if with_article else bg)
    return text


def _phrases(scene: Scene) -> list[str]:
    """The scene's distinct object phrases in order of first appearance: the regions' order."""
    return list(dict.fromkeys(o.phrase for o in scene.objects))


def word_regions(scene: Scene, text: str) -> list[int | None]:
    """What each word of a caption of `scene` names, by index into `region_masks(scene)`: an
    object phrase's colour and shape words the objects of that phrase (one index per phrase: two
    "red circle"s are one region), a background's name and "background" the background; None for
    the grammar's words ("a", "an", "and", "on", ","). Words as the tokenizer splits them (a comma
    is a word of its own)."""
    words = text.replace(",", " ,").split()
    phrases = _phrases(scene)
    out: list[int | None] = [None] * len(words)
    for i, (w, after) in enumerate(zip(words, [*words[1:], ""])):
        if after == "background" and w in BACKGROUNDS:
            out[i] = out[i + 1] = len(phrases)
        elif f"{w} {after}" in phrases:
            out[i] = out[i + 1] = phrases.index(f"{w} {after}")
    return out


def region_masks(scene: Scene, size: int = SIZE) -> np.ndarray:
    """Coverage of each distinct object phrase of `scene` (the union of its objects), then of the
    background (no object): float32 (n_phrases + 1, size, size) in [0, 1], as `word_regions` indexes."""
    phrases = _phrases(scene)
    cover = np.zeros((len(phrases) + 1, size, size), np.float32)
    for o in scene.objects:
        i = phrases.index(o.phrase)
        cover[i] = np.maximum(cover[i], object_coverage(o, size))
    cover[-1] = 1 - cover[:-1].max(axis=0, initial=0)
    return cover


def vocabulary() -> list[str]:
    """Every word the caption grammar (and the edit concepts) can produce."""
    words = ["a", "and", "on", "background", ",", *SHAPES, *COLORS, *BACKGROUNDS, "an"]
    return list(dict.fromkeys(words))


# --- edits -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """One edit of a scene and its ground truth.

    kind: one of EDIT_KINDS; index: the object edited (None for add and background);
    add / remove: the edit as SEGA concepts; target: the edited scene.
    """

    kind: str
    source: Scene
    target: Scene
    index: int | None
    add: tuple[str, ...]
    remove: tuple[str, ...]

    @property
    def source_caption(self) -> str:
        return caption(self.source)

    @property
    def target_caption(self) -> str:
        return caption(self.target)

    def changed_region(self, size: int = SIZE) -> np.ndarray:
        """Ground-truth changed region: bool (size, size), where source and target differ."""
        a = render(self.source, size).astype(np.int16)
        b = render(self.target, size).astype(np.int16)
        return np.abs(a - b).max(axis=-1) > 0


def recolor(scene: Scene, i: int, color: str) -> Scene:
    objs = list(scene.objects)
    objs[i] = replace(objs[i], color=color)
    return replace(scene, objects=tuple(objs))


def reshape(scene: Scene, i: int, shape: str) -> Scene:
    objs = list(scene.objects)
    objs[i] = replace(objs[i], shape=shape)
    return replace(scene, objects=tuple(objs))


def remove(scene: Scene, i: int) -> Scene:
    return replace(scene, objects=scene.objects[:i] + scene.objects[i + 1 :])


def add(scene: Scene, obj: Obj) -> Scene:
    objs = sorted([*scene.objects, obj], key=lambda o: (o.x, o.y))
    return replace(scene, objects=tuple(objs))


def with_background(scene: Scene, background: str) -> Scene:
    return replace(scene, background=background)


def sample_edit(seed: int, kind: str) -> Edit:
    """A deterministic edit of `kind` on a scene sampled from `seed`."""
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")
    rng = np.random.default_rng([seed, 0xED17, EDIT_KINDS.index(kind)])
    n = {"add": int(rng.integers(1, 3)), "remove": int(rng.integers(2, 4))}.get(kind, int(rng.integers(1, 4)))
    src = sample_scene(seed, n_objects=n)
    i = int(rng.integers(len(src.objects)))
    o = src.objects[i]
    if kind == "recolor":
        new = str(rng.choice([c for c in COLORS if c != o.color]))
        tgt = recolor(src, i, new)
        return Edit(kind, src, tgt, i, (f"{new} {o.shape}",), (o.phrase,))
    if kind == "reshape":
        new = str(rng.choice([s for s in SHAPES if s != o.shape]))
        tgt = reshape(src, i, new)
        return Edit(kind, src, tgt, i, (f"{o.color} {new}",), (o.phrase,))
    if kind == "remove":
        return Edit(kind, src, remove(src, i), i, (), (o.phrase,))
    if kind == "add":
        obj = sample_object(rng, src.objects)
        while obj is None:  # no room: drop to one object
            src = replace(src, objects=src.objects[:1])
            obj = sample_object(rng, src.objects)
        tgt = add(src, obj)
        return Edit(kind, src, tgt, None, (obj.phrase,), ())
    new_bg = str(rng.choice([b for b in BACKGROUNDS if b != src.background]))
    tgt = with_background(src, new_bg)
    return Edit(kind, src, tgt, None, (f"{new_bg} background",), (f"{src.background} background",))

"""The shapes world: captioned images rendered from a seed, and the judge that reads them back.

No captioned image set can be downloaded here, so nanodiffusion draws one. A scene holds one
to three flat, upright objects on a plain or lightly textured grey background; its caption
states some of their attributes (shape, colour, size, position), a relation between two
objects, or a count. The same seed always gives the same image and caption.

The judge is a detector written by hand for this world: objects are the saturated blobs on
the grey background (every object colour is saturated, every background grey is not); each
blob's colour is the nearest named colour of its most saturated pixels, its shape the best
match among the five shapes' silhouettes, its size and position read from its box and centre.
It is the referee of prompt adherence, so its own accuracy on fresh renders is measured
(`detector_accuracy`) and tested first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np

from nanodiffusion.errors import NanodiffError

SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLOURS = {  # saturated, well apart in hue; no grey, so the background is never an object
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 210, 30),
    "purple": (140, 50, 200),
    "orange": (245, 130, 20),
}
SIZES = {"small": 0.15, "large": 0.24}  # half-extent of the object, as a fraction of the image side
POSITIONS = ("left", "right", "top", "bottom", "centre")
RELATIONS = ("left of", "right of", "above", "below")
# colour-shape pairs the training stream never renders: prompts with them test composition
HELD_OUT = (("purple", "triangle"), ("orange", "circle"), ("green", "star"))

# The fixed prompt list of training grids and benchmark figures: every category (4 x 4), the last
# row the held-out colour-shape pairs.
GRID_PROMPTS = (
    "a red circle",
    "a blue square on the left",
    "a large yellow star",
    "a small green triangle at the top",
    "a purple diamond in the centre",
    "an orange square at the bottom",
    "a red circle left of a blue square",
    "a yellow star above a green diamond",
    "a blue triangle below a red square",
    "two green triangles",
    "three red circles",
    "two blue stars",
    "a purple triangle",
    "an orange circle",
    "a green star",
    "a purple triangle right of a yellow square",
)

_SUPERSAMPLE = 4  # anti-aliasing: coverage averaged over 4 x 4 points per pixel
_SATURATION = 50  # max - min channel above which a pixel belongs to an object


@dataclass(frozen=True)
class Obj:
    """One object: what it is, and where (centre and half-extent as fractions of the side)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float

    @property
    def r(self) -> float:
        return SIZES[self.size]


@dataclass
class Scene:
    image: np.ndarray  # [H, W, 3] uint8
    caption: str
    objects: list[Obj]
    spec: dict = field(default_factory=dict)  # what the caption states, for the judge


# --- geometry -----------------------------------------------------------------------------------
def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    star = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    star[:, 1] -= (star[:, 1].max() + star[:, 1].min()) / 2  # centred in its box, like every shape
    return star


# every shape is centred in its bounding box, so the box centre is the object's position
_POLYGONS = {
    "triangle": np.array([[0.0, -0.9], [1.0, 0.9], [-1.0, 0.9]]),
    "star": _star(),
}


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v), in units of the object's half-extent (v pointing down), are inside."""
    if shape == "circle":
        return u**2 + v**2 <= 1
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.85
    if shape == "diamond":
        return abs(u) + abs(v) <= 1
    if shape in _POLYGONS:  # even-odd rule, vectorised over the points
        poly = _POLYGONS[shape]
        inside = np.zeros(u.shape, bool)
        for (x1, y1), (x2, y2) in zip(poly, np.roll(poly, -1, 0), strict=True):
            crosses = (y1 > v) != (y2 > v)
            x_at = x1 + (v - y1) * (x2 - x1) / (y2 - y1 + 1e-12)
            inside ^= crosses & (u < x_at)
        return inside
    raise NanodiffError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def _coverage(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    s = _SUPERSAMPLE
    grid = (np.arange(size * s) + 0.5) / (size * s)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    return _inside(shape, (x - cx) / r, (y - cy) / r).reshape(size, s, size, s).mean((1, 3))


def coverage(obj: Obj, size: int) -> np.ndarray:
    """The fraction of each pixel [size, size] the object covers (anti-aliased by supersampling)."""
    return _coverage(obj.shape, obj.cx, obj.cy, obj.r, size)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    grey = rng.uniform(20, 90)
    bg = np.full((size, size), grey)
    if rng.random() < 0.5:  # light texture: smooth noise of a few grey levels
        coarse = rng.uniform(-10, 10, (5, 5))
        idx = np.linspace(0, 4, size)
        i0 = np.floor(idx).astype(int).clip(0, 3)
        f = idx - i0
        rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
        bg = bg + rows[:, i0] * (1 - f)[None] + rows[:, i0 + 1] * f[None]
    return np.repeat(bg[..., None], 3, 2)


def draw(objects: list[Obj], size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """Objects on a grey background (drawn from rng, or plain mid-dark grey) -> [size, size, 3] uint8."""
    image = _background(rng, size) if rng is not None else np.full((size, size, 3), 50.0)
    for obj in objects:
        a = coverage(obj, size)[..., None]
        image = image * (1 - a) + np.array(COLOURS[obj.colour], float) * a
    return image.round().clip(0, 255).astype(np.uint8)


# --- scenes and captions --------------------------------------------------------------------------
def position_of(cx: float, cy: float) -> str:
    """The position word for a centre: the centre box first, then the dominant axis."""
    dx, dy = cx - 0.5, cy - 0.5
    if max(abs(dx), abs(dy)) < 0.12:
        return "centre"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def relation_holds(a: tuple[float, float], b: tuple[float, float], relation: str) -> bool:
    """Whether centre a is `relation` centre b, along the dominant axis between them."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    horizontal = abs(dx) > abs(dy)
    return {
        "left of": horizontal and dx < 0,
        "right of": horizontal and dx > 0,
        "above": not horizontal and dy < 0,
        "below": not horizontal and dy > 0,
    }[relation]


def _place_at(rng, r: float, position: str) -> tuple[float, float]:
    lo = r + 0.03
    if position == "centre":
        return rng.uniform(0.43, 0.57), rng.uniform(0.43, 0.57)
    along = rng.uniform(lo, min(0.33, 0.5 - 0.17))  # at least 0.17 from the middle
    across = rng.uniform(0.42, 0.58)
    if position in ("right", "bottom"):
        along = 1 - along
    return (along, across) if position in ("left", "right") else (across, along)


def _apart(objs: list[Obj], margin: float = 0.04) -> bool:
    """No two objects' boxes touch (each box is the centre +- r)."""
    for i, a in enumerate(objs):
        for b in objs[:i]:
            if abs(a.cx - b.cx) < a.r + b.r + margin and abs(a.cy - b.cy) < a.r + b.r + margin:
                return False
    return True


def _pick_pair(rng, held_out: bool) -> tuple[str, str]:
    """A colour and a shape; held-out pairs are never drawn (held_out=False) or only drawn (True)."""
    if held_out:
        return HELD_OUT[rng.integers(len(HELD_OUT))]
    while True:
        colour, shape = list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        if (colour, shape) not in HELD_OUT:
            return colour, shape


_NUMBERS = {2: "two", 3: "three"}


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _single(rng, held_out: bool) -> tuple[list[Obj], str, dict]:
    colour, shape = _pick_pair(rng, held_out)
    size = list(SIZES)[rng.integers(2)]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    obj = Obj(shape, colour, size, *_place_at(rng, SIZES[size], position))
    say_size, say_pos = rng.random() < 0.6, rng.random() < 0.6
    noun = " ".join(([size] if say_size else []) + [colour, shape])
    where = {
        "left": ["on the left", "at the left"],
        "right": ["on the right", "at the right"],
        "top": ["at the top", "near the top"],
        "bottom": ["at the bottom", "near the bottom"],
        "centre": ["in the centre", "in the middle"],
    }[position]
    phrase = where[rng.integers(2)]
    templates = ["a {n}", "a {n} {p}", "one {n} {p}", "there is a {n} {p}", "{p}, a {n}"]
    template = templates[0] if not say_pos else templates[1 + rng.integers(4)]
    template = template.replace("a {n}", "an {n}") if noun[0] in "aeiou" else template
    spec = {
        "kind": "single",
        "objects": [
            {
                "shape": shape,
                "colour": colour,
                "size": size if say_size else None,
                "position": position if say_pos else None,
            }
        ],
    }
    return [obj], template.format(n=noun, p=phrase), spec


def _relation(rng, held_out: bool) -> tuple[list[Obj], str, dict]:
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    while True:
        (c1, s1), (c2, s2) = _pick_pair(rng, held_out), _pick_pair(rng, False)
        if (c1, s1) != (c2, s2):
            break
    while True:
        sizes = [list(SIZES)[rng.integers(2)] for _ in range(2)]
        r1, r2 = SIZES[sizes[0]], SIZES[sizes[1]]
        a = [rng.uniform(r1 + 0.03, 1 - r1 - 0.03), rng.uniform(r1 + 0.03, 1 - r1 - 0.03)]
        b = [rng.uniform(r2 + 0.03, 1 - r2 - 0.03), rng.uniform(r2 + 0.03, 1 - r2 - 0.03)]
        objs = [Obj(s1, c1, sizes[0], *a), Obj(s2, c2, sizes[1], *b)]
        dx, dy = abs(a[0] - b[0]), abs(a[1] - b[1])
        clear = max(dx, dy) > 1.5 * min(dx, dy)  # the relation is unambiguous
        if clear and _apart(objs) and relation_holds(a, b, relation):
            break
    said = {
        "left of": ["left of", "to the left of"],
        "right of": ["right of", "to the right of"],
        "above": ["above", "over"],
        "below": ["below", "under"],
    }[relation][rng.integers(2)]
    captions = [f"{_a(c1)} {c1} {s1} {said} {_a(c2)} {c2} {s2}", f"{c1} {s1} {said} {c2} {s2}"]
    caption = captions[rng.integers(2)]
    spec = {
        "kind": "relation",
        "relation": relation,
        "objects": [{"shape": s1, "colour": c1}, {"shape": s2, "colour": c2}],
    }
    return objs, caption, spec


def _count(rng, held_out: bool) -> tuple[list[Obj], str, dict]:
    colour, shape = _pick_pair(rng, held_out)
    n = 2 + int(rng.integers(2))
    while True:
        r = SIZES["small"]
        objs = [
            Obj(
                shape,
                colour,
                "small",
                rng.uniform(r + 0.03, 1 - r - 0.03),
                rng.uniform(r + 0.03, 1 - r - 0.03),
            )
            for _ in range(n)
        ]
        if _apart(objs):
            break
    plural = f"{shape}es" if shape.endswith("s") else f"{shape}s"
    caption = [f"{_NUMBERS[n]} {colour} {plural}", f"{_NUMBERS[n]} {colour} {plural} on a grey background"][
        rng.integers(2)
    ]
    return objs, caption, {"kind": "count", "count": n, "objects": [{"shape": shape, "colour": colour}]}


KINDS = {"single": _single, "relation": _relation, "count": _count}
KIND_WEIGHTS = {"single": 0.5, "relation": 0.3, "count": 0.2}


def render_scene(seed: int, size: int = 32, kind: str | None = None, held_out: bool = False) -> Scene:
    """The scene of a seed: image, caption, objects and what the caption states. The scene is
    laid out in fractions of the side, so one seed at 32 and at 64 pixels is the same scene.

    kind: single | relation | count (None: drawn with KIND_WEIGHTS). held_out=True puts one of
    HELD_OUT's colour-shape pairs in the scene (the training stream never does)."""
    if size < 16:
        raise NanodiffError(f"shapes are rendered at 16 pixels or more, got {size}")
    rng = np.random.default_rng(seed)  # not the size: a seed is one scene at every resolution
    if kind is None:
        kind = rng.choice(list(KIND_WEIGHTS), p=list(KIND_WEIGHTS.values()))
    if kind not in KINDS:
        raise NanodiffError(f"unknown scene kind {kind!r}; choose one of {', '.join(KINDS)}")
    objects, caption, spec = KINDS[kind](rng, held_out)
    return Scene(draw(objects, size, rng), caption, objects, spec)


def render_dataset(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """n training scenes (seeds seed*n ... seed*n + n - 1): images [n, H, W, 3] uint8 and captions."""
    scenes = [render_scene(seed * n + i, size) for i in range(n)]
    return np.stack([s.image for s in scenes]), [s.caption for s in scenes]


# --- the detector ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Detected:
    shape: str
    colour: str
    size: str
    position: str
    cx: float
    cy: float
    area: float  # pixels covered (coverage-weighted)


@dataclass(frozen=True)
class _Template:
    area: float  # covered pixels / (side * r)^2: reads the half-extent r back from an area
    offset: tuple[float, float]  # (x, y) of the centre of mass minus the centre, in units of r


def _moments(weights: np.ndarray) -> tuple[float, float, float]:
    """Total weight and centre of mass (x, y), as fractions of the side."""
    size = weights.shape[0]
    ys, xs = np.nonzero(weights)
    w = weights[ys, xs]
    return float(w.sum()), float((xs + 0.5) @ w / w.sum() / size), float((ys + 0.5) @ w / w.sum() / size)


@cache
def _templates(size: int) -> dict[str, _Template]:
    """Each shape's area and centre-of-mass offset as rendered at this image size (small and
    large averaged)."""
    out = {}
    for shape in SHAPES:
        parts = []
        for word, r in SIZES.items():
            c = 0.5 + 0.3 / size  # off the pixel grid, like most renders
            cov = coverage(Obj(shape, "red", word, c, c), size)
            area, mx, my = _moments(cov)
            parts.append((area / (size * r) ** 2, (mx - c) / r, (my - c) / r))
        area, ox, oy = np.mean(parts, 0)
        out[shape] = _Template(float(area), (float(ox), float(oy)))
    return out


def detect(image: np.ndarray, min_area: float = 0.004) -> list[Detected]:
    """The objects in an image [H, W, 3] uint8 (or float in [0, 255]), left to right.

    Over a grey background, a pixel's saturation (max - min channel) is its object coverage
    times the object colour's saturation, so coverage is read back exactly. The shape is the one
    whose render best matches that coverage (soft IoU), each candidate drawn at the centre and
    size the blob's area and centre of mass give for that shape.
    min_area: blobs covering less than this fraction of the image are ignored (stray pixels)."""
    from scipy import ndimage

    image = np.asarray(image, dtype=float)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise NanodiffError(f"detect() wants a square RGB image [H, W, 3], got shape {image.shape}")
    size = image.shape[0]
    saturation = image.max(2) - image.min(2)
    labels, count = ndimage.label(saturation > _SATURATION, structure=np.ones((3, 3)))
    palette = np.array(list(COLOURS.values()), float)
    names = list(COLOURS)
    found = []
    for k in range(1, count + 1):
        blob = labels == k
        vivid = blob & (saturation >= 0.8 * saturation[blob].max())
        c = int(np.argmin(((palette - np.median(image[vivid], 0)) ** 2).sum(1)))
        # the blob and its faint rim (coverage below the threshold), not another blob's pixels
        grown = ndimage.binary_dilation(blob, np.ones((3, 3))) & ((labels == 0) | blob)
        weights = np.where(grown, saturation / (palette[c].max() - palette[c].min()), 0.0).clip(0, 1)
        area, mx, my = _moments(weights)
        if area < min_area * size * size:
            continue
        best = -1.0
        for name, t in _templates(size).items():
            r = np.sqrt(area / t.area) / size
            x, y = mx - t.offset[0] * r, my - t.offset[1] * r
            drawn = _coverage(name, x, y, r, size)
            score = np.minimum(drawn, weights).sum() / np.maximum(drawn, weights).sum()
            if score > best:
                best, shape, cx, cy, radius = score, name, x, y, r
        word = "small" if radius < (SIZES["small"] + SIZES["large"]) / 2 else "large"
        found.append(Detected(shape, names[c], word, position_of(cx, cy), cx, cy, area))
    return sorted(found, key=lambda d: d.cx)


# --- the judge ------------------------------------------------------------------------------------
def _matches(d: Detected, want: dict) -> bool:
    return all(
        want.get(key) is None or getattr(d, key) == want[key]
        for key in ("shape", "colour", "size", "position")
    )


def judge(image: np.ndarray, spec: dict) -> dict[str, bool]:
    """Which of the caption's statements hold in the image: a check per category, and `all`.

    single:   shape (an object of that shape), colour (that shape in that colour), and size and
              position when stated; relation: binding (both colour-shape pairs present) and
              spatial (the relation holds between them); count: exactly that many of the pair."""
    found = detect(image)
    checks: dict[str, bool] = {}
    if spec["kind"] == "single":
        want = spec["objects"][0]
        checks["shape"] = any(d.shape == want["shape"] for d in found)
        checks["colour"] = any(d.shape == want["shape"] and d.colour == want["colour"] for d in found)
        for key in ("size", "position"):
            if want.get(key) is not None:
                checks[key] = any(_matches(d, want) for d in found)
    elif spec["kind"] == "relation":
        a = [d for d in found if _matches(d, spec["objects"][0])]
        b = [d for d in found if _matches(d, spec["objects"][1])]
        checks["binding"] = bool(a and b)
        checks["spatial"] = any(
            relation_holds((p.cx, p.cy), (q.cx, q.cy), spec["relation"]) for p in a for q in b
        )
    elif spec["kind"] == "count":
        checks["count"] = sum(_matches(d, spec["objects"][0]) for d in found) == spec["count"]
    else:
        raise NanodiffError(f"unknown caption kind {spec['kind']!r}")
    checks["all"] = all(checks.values())
    return checks


def detector_accuracy(n: int = 500, size: int = 32, seed: int = 10**6) -> dict[str, float]:
    """Per-attribute accuracy of `detect` on n fresh renders (seeds from `seed`, away from training's),
    each rendered object matched to the nearest detection; `count` is the right number of objects."""
    hits = {"count": 0, "shape": 0, "colour": 0, "size": 0, "position": 0}
    total = 0
    for i in range(n):
        scene = render_scene(seed + i, size)
        found = detect(scene.image)
        hits["count"] += len(found) == len(scene.objects)
        for obj in scene.objects:
            total += 1
            if not found:
                continue
            d = min(found, key=lambda d: (d.cx - obj.cx) ** 2 + (d.cy - obj.cy) ** 2)
            hits["shape"] += d.shape == obj.shape
            hits["colour"] += d.colour == obj.colour
            hits["size"] += d.size == obj.size
            hits["position"] += d.position == position_of(obj.cx, obj.cy)
    return {k: v / (n if k == "count" else total) for k, v in hits.items()}


def prompt_set(n: int, held_out: bool = False, seed: int = 2 * 10**7) -> list[Scene]:
    """n evaluation scenes (captions and specs; their images are the reference), from seeds
    away from the training and test streams; held_out=True: each uses a held-out colour-shape pair."""
    return [render_scene(seed + i, 32, held_out=held_out) for i in range(n)]


def adherence(images: list[np.ndarray] | np.ndarray, specs: list[dict]) -> dict[str, dict[str, float]]:
    """Prompt adherence of generated images [H, W, 3] uint8, one per caption spec: per caption
    kind, the fraction of images in which each check holds (`all`: every stated attribute,
    count and relation), and the number of images."""
    if len(images) != len(specs):
        raise NanodiffError(f"{len(images)} images for {len(specs)} prompts")
    table: dict[str, dict[str, list[bool]]] = {}
    for image, spec in zip(images, specs, strict=True):
        for name, ok in judge(image, spec).items():
            for kind in (spec["kind"], "overall"):
                if name == "all" or kind != "overall":
                    table.setdefault(kind, {}).setdefault(name, []).append(ok)
    return {
        kind: {**{name: float(np.mean(v)) for name, v in checks.items()}, "n": len(checks["all"])}
        for kind, checks in table.items()
    }


# --- prompt adherence of a model ------------------------------------------------------------------
def evaluate_prompts(
    generate, n: int = 200, n_held_out: int = 100, size: int = 32, seed: int = 2 * 10**7
) -> dict:
    """Prompt adherence of a text-to-image model on the shapes world's evaluation prompts.

    generate(captions) -> images [N, H, W, 3] uint8, one per caption. The prompts are
    `prompt_set(n)` (single, relation and count captions in the training mix) and
    `prompt_set(n_held_out, held_out=True)` (each names a held-out colour-shape pair). Beside the
    generated images' adherence, the same prompts' own renders at `size` are judged: the score a
    perfect model gets from this referee (1.0 up to the detector's errors)."""
    sets = {"prompts": prompt_set(n, seed=seed)}
    if n_held_out:
        sets["held-out"] = prompt_set(n_held_out, held_out=True, seed=seed + 10**6)
    result: dict = {"n": n, "n_held_out": n_held_out, "size": size}
    for name, scenes in sets.items():
        captions, specs = [s.caption for s in scenes], [s.spec for s in scenes]
        images = np.asarray(generate(captions))
        if images.shape[0] != len(captions) or images.ndim != 4 or images.shape[3] != 3:
            raise NanodiffError(
                f"generate returned {images.shape} for {len(captions)} prompts; expected [N, H, W, 3]"
            )
        renders = [
            render_scene(
                seed + i + (10**6 if name == "held-out" else 0), images.shape[1], held_out=name == "held-out"
            ).image
            for i in range(len(scenes))
        ]
        result[name] = {
            "generated": adherence(images, specs),
            "renders": adherence(renders, specs),
            "captions": captions,
        }
    return result


def format_adherence(result: dict) -> str:
    """The table `nanodiff eval-prompts` prints: per category and check, the fraction of
    generated images that hold it, beside the renders' own score."""
    rows = [("category", "check", "generated", "renders", "n")]
    for name in ("prompts", "held-out"):
        if name not in result:
            continue
        gen, ref = result[name]["generated"], result[name]["renders"]
        for kind in ("single", "relation", "count", "overall"):
            if kind not in gen:
                continue
            label = kind if name == "prompts" else f"held-out {kind}"
            for check in [c for c in gen[kind] if c not in ("all", "n")] + ["all"]:
                rows.append(
                    (label, check, f"{gen[kind][check]:.3f}", f"{ref[kind][check]:.3f}", str(gen[kind]["n"]))
                )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )

"""The shapes world: seeded, CLEVR-like scenes of objects with known attributes and captions.

Every attribute that decides a label is known, which is what lets the text explanations be
*scored* (benchmarks/quality.py). Drawing is vectorized numpy on a coordinate grid, thousands of
64x64 scenes per second on one core; no torch needed (``textcam demo`` uses it on the runtime).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLORS = {
    "red": (220, 30, 30), "green": (40, 180, 60), "blue": (40, 70, 230), "yellow": (235, 220, 40),
    "purple": (150, 50, 200), "orange": (245, 140, 20), "white": (245, 245, 245), "pink": (250, 120, 190),
}
SIZES = ("small", "large")
TEXTURES = ("solid", "striped", "dotted")
BACKGROUNDS = {
    "gray": (120, 120, 120), "black": (20, 20, 20), "brown": (110, 75, 45), "teal": (30, 110, 110),
    "navy": (25, 30, 90),
}
_SIZE_RADIUS = {"small": 0.16, "large": 0.28}  # fraction of the image side


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    texture: str
    center: tuple[float, float]  # (x, y) in pixels
    radius: float
    area: int  # pixels actually drawn (after occlusion)

    def phrase(self) -> str:
        texture = "" if self.texture == "solid" else f"{self.texture} "
        return f"{self.size} {self.color} {texture}{self.shape}"


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 [H, W, 3]
    objects: tuple[SceneObject, ...]
    background: str
    noise: float

    @property
    def largest(self) -> SceneObject:
        return max(self.objects, key=lambda o: o.area)

    def caption(self) -> str:
        things = " and ".join(f"a {o.phrase()}" for o in self.objects)
        return f"{things} on a {self.background} background"

    def attributes(self) -> dict:
        return {"background": self.background, "noise": self.noise,
                "objects": [asdict(o) for o in self.objects], "caption": self.caption()}


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of ``shape`` centred at the origin of the (x, y) grid."""
    if shape == "circle":
        return x * x + y * y <= radius * radius
    if shape == "square":
        side = radius * 0.85
        return (np.abs(x) <= side) & (np.abs(y) <= side)
    if shape == "triangle":
        # upward, inscribed in the circle: a flat bottom edge and two sides at 60 degrees
        return (y <= radius * 0.5) & (y >= 1.732 * np.abs(x) - radius)
    if shape == "star":
        angle = np.arctan2(y, x)
        limit = radius * (0.55 + 0.45 * np.cos(5 * angle) ** 2 * (np.cos(5 * angle) > 0))
        return x * x + y * y <= limit * limit
    if shape == "cross":
        arm = radius * 0.33
        return ((np.abs(x) <= arm) & (np.abs(y) <= radius)) | ((np.abs(y) <= arm) & (np.abs(x) <= radius))
    raise ValueError(f"unknown shape {shape!r}")


def texture_mask(texture: str, x: np.ndarray, y: np.ndarray, side: int) -> np.ndarray:
    """Where the object shows its colour; elsewhere it shows a dark shade of it."""
    period = max(4.0, side / 10.0)
    if texture == "solid":
        return np.ones_like(x, dtype=bool)
    if texture == "striped":
        return np.floor((x + y) / period) % 2 == 0
    if texture == "dotted":
        gx = (x % period) - period / 2
        gy = (y % period) - period / 2
        return gx * gx + gy * gy > (period * 0.3) ** 2
    raise ValueError(f"unknown texture {texture!r}")


def _pinned(fixed: dict, name: str, drawn):
    value = fixed.get(name)
    return drawn if value is None else value


class ShapesWorld:
    """Seeded scene sampler. ``scene(i)`` is a pure function of (seed, i, overrides)."""

    def __init__(self, size: int = 64, seed: int = 0, max_objects: int = 3):
        self.size = size
        self.seed = seed
        self.max_objects = max_objects
        coords = np.arange(size, dtype=np.float32) + 0.5
        self._xx, self._yy = np.meshgrid(coords, coords)

    def scene(self, index: int, **fixed) -> Scene:
        """Scene number ``index``. ``fixed`` pins attributes: background=, and for the first
        (largest-drawn) object shape=, color=, size=, texture=; ``objects=`` pins the count."""
        rng = np.random.default_rng((self.seed, index))
        side = self.size
        # every random draw happens whatever is pinned, so pinning one attribute changes only that
        # attribute: scene(i, shape="star") and scene(i, shape="cross") differ in the shape alone
        background = _pinned(fixed, "background", str(rng.choice(list(BACKGROUNDS))))
        noise = float(rng.uniform(0.0, 18.0))
        canvas = np.empty((side, side, 3), dtype=np.float32)
        canvas[:] = BACKGROUNDS[background]
        canvas += rng.normal(0.0, noise, canvas.shape).astype(np.float32)
        count = int(_pinned(fixed, "objects", rng.integers(1, self.max_objects + 1)))
        owner = np.full((side, side), -1, dtype=np.int16)
        specs = []
        for k in range(count):
            pins = fixed if k == 0 else {}
            # the others are small, so that "the largest object" is the first one (unless pinned small)
            size = _pinned(pins, "size", "large") if k == 0 else "small"
            radius = _SIZE_RADIUS[size] * side * float(rng.uniform(0.9, 1.1))
            specs.append({
                "shape": _pinned(pins, "shape", str(rng.choice(SHAPES))),
                "color": _pinned(pins, "color", str(rng.choice(list(COLORS)))),
                "texture": _pinned(pins, "texture", str(rng.choice(TEXTURES))),
                "size": size,
                "radius": radius,
            })
        # the first object is large; others are placed away from it where possible
        centers = []
        for spec in specs:
            margin = spec["radius"] + 1
            for _attempt in range(20):
                c = rng.uniform(margin, side - margin, 2)
                if all(np.hypot(*(c - o)) > (spec["radius"] + r) * 0.9 for o, r in centers):
                    break
            centers.append((c, spec["radius"]))
        # draw the small ones last so the largest object is not covered by accident
        for k in sorted(range(count), key=lambda i: -specs[i]["radius"]):
            spec, (center, radius) = specs[k], centers[k]
            x, y = self._xx - center[0], self._yy - center[1]
            mask = shape_mask(spec["shape"], x, y, radius)
            lit = texture_mask(spec["texture"], self._xx, self._yy, side)
            color = np.asarray(COLORS[spec["color"]], dtype=np.float32)
            canvas[mask & lit] = color
            canvas[mask & ~lit] = color * 0.35
            owner[mask] = k
        objects = tuple(
            SceneObject(s["shape"], s["color"], s["size"], s["texture"], (float(c[0]), float(c[1])), float(r),
                        int((owner == k).sum()))
            for k, (s, (c, r)) in enumerate(zip(specs, centers, strict=True))
        )
        image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
        return Scene(image, objects, background, noise)

    def write_pngs(self, folder, count: int, start: int = 0) -> list:
        """Scenes ``start`` .. ``start + count - 1`` as PNG files in ``folder`` (a probe set on disk)."""
        from pathlib import Path

        from PIL import Image

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index in range(start, start + count):
            path = folder / f"{index:06d}.png"
            Image.fromarray(self.scene(index).image).save(path)
            paths.append(path)
        return paths

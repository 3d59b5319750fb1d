"""The `shapes` scene generator, and the cache every task's view of it is written to once.

A scene is a textured background with one main object and a few smaller distractors, each a coloured,
rotated, scaled geometric shape from 10 classes. One scene yields the image plus, per object, its class,
box, mask and depth, so classification (the main object's class), detection (boxes), segmentation
(masks), depth and saliency (the main object's mask) all come from the same generator. Scenes are a
pure function of (seed, index): the same dataset on every machine. A task writes its view in its
own on-disk format through :func:`cached_view`, with the split names of :data:`SPLIT_OFFSETS`.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.results import follow_umask

SPLIT_OFFSETS = {"train": 0, "validation": 10_000_000, "test": 20_000_000}
"""Split names of every view, and the scene index each split starts at: splits never share a scene."""
CLASSES = ("circle", "square", "triangle", "diamond", "cross", "star", "ring", "hexagon", "ellipse", "arrow")


@dataclass
class SceneObject:
    """One object of a scene: class index, box (x0, y0, x1, y1) in pixels, boolean mask, depth (smaller is nearer)."""

    label: int
    box: tuple[float, float, float, float]
    mask: np.ndarray
    depth: float


@dataclass
class Scene:
    """An RGB uint8 image (H, W, 3), its objects (main object first) and a dense depth map (H, W)."""

    image: np.ndarray
    objects: list[SceneObject]
    depth: np.ndarray

    @property
    def label(self) -> int:
        """Classification view: the class of the main object."""
        return self.objects[0].label

    def visible(self, obj: SceneObject) -> np.ndarray:
        """The pixels of ``obj`` not hidden behind a nearer object."""
        return obj.mask & np.isclose(self.depth, obj.depth)

    def class_map(self) -> np.ndarray:
        """Segmentation view: per pixel 0 (background) or 1 + the class of the object seen there (uint8)."""
        classes = np.zeros(self.depth.shape, np.uint8)
        for obj in self.objects:
            classes[self.visible(obj)] = obj.label + 1
        return classes


def _polygon_inside(u: np.ndarray, v: np.ndarray, sides: int, phase: float = 0.0) -> np.ndarray:
    """Inside test of a regular polygon of circumradius 1 in local coordinates (u, v)."""
    angle = np.arctan2(v, u) - phase
    sector = 2 * np.pi / sides
    local = np.mod(angle, sector) - sector / 2
    return np.hypot(u, v) * np.cos(local) <= np.cos(sector / 2)


def shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of shape ``label`` in local coordinates, where the shape spans roughly [-1, 1]^2."""
    r = np.hypot(u, v)
    name = CLASSES[label]
    if name == "circle":
        return r <= 1
    if name == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if name == "triangle":
        return _polygon_inside(u, v, 3, np.pi / 2)
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1))
    if name == "star":
        angle = np.arctan2(v, u)
        return r <= 0.45 + 0.55 * (0.5 + 0.5 * np.cos(5 * angle)) ** 3
    if name == "ring":
        return (r <= 1) & (r >= 0.55)
    if name == "hexagon":
        return _polygon_inside(u, v, 6)
    if name == "ellipse":
        return (u / 1.0) ** 2 + (v / 0.5) ** 2 <= 1
    # arrow: a shaft and a triangular head pointing along +u
    shaft = (u >= -1) & (u <= 0.1) & (np.abs(v) <= 0.25)
    head = (u >= 0.1) & (u <= 1) & (np.abs(v) <= 0.9 * (1 - u) / 0.9)
    return shaft | head


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background: a colour gradient, oriented stripes and noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0, 1, 3)
    tilt = rng.uniform(-0.4, 0.4, (2, 3))
    image = base + x[..., None] * tilt[0] + y[..., None] * tilt[1]
    theta, freq = rng.uniform(0, np.pi), rng.uniform(3, 10)
    stripes = np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + rng.uniform(0, 6.3))
    image = image + rng.uniform(0.05, 0.25) * stripes[..., None] * rng.uniform(-1, 1, 3)
    return image + rng.normal(0, 0.04, image.shape)


def render_scene(seed: int, index: int, size: int = 32, distractors: tuple[int, int] = (0, 2),
                 distractor_scale: tuple[float, float] = (0.08, 0.14), inside: bool = False) -> Scene:
    """Scene ``index`` of the dataset with ``seed``: deterministic, independent of any other scene.

    ``distractors`` bounds the number of smaller objects, ``distractor_scale`` their size (fraction of the
    image); ``inside`` keeps them whole inside the image (detection labels every object, so none is cut).
    """
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size)
    y, x = np.mgrid[0:size, 0:size] + 0.5
    depth = np.full((size, size), 10.0) - 2.0 * (y / size)  # floor plane: lower rows nearer
    objects: list[SceneObject] = []
    count = 1 + int(rng.integers(distractors[0], distractors[1] + 1))
    for k in range(count):
        label = int(rng.integers(len(CLASSES)))
        main = k == 0
        scale = size * (rng.uniform(0.22, 0.36) if main else rng.uniform(*distractor_scale))
        cx, cy = rng.uniform(scale, size - scale, 2) if main or inside else rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        du, dv = (x - cx) / scale, (y - cy) / scale
        u = du * np.cos(angle) + dv * np.sin(angle)
        v = -du * np.sin(angle) + dv * np.cos(angle)
        mask = shape_mask(label, u, v)
        if not mask.any():
            continue
        colour = rng.uniform(0, 1, 3)
        shade = 1 + 0.25 * (u * rng.uniform(-1, 1) + v * rng.uniform(-1, 1))  # soft lighting across the shape
        obj_depth = float(rng.uniform(2, 5) if main else rng.uniform(5, 8))
        visible = mask & (depth > obj_depth)
        image[visible] = (colour * shade[..., None])[visible]
        depth[visible] = obj_depth
        ys, xs = np.nonzero(mask)
        objects.append(SceneObject(label, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)),
                                   mask, obj_depth))
    image = np.clip(image + rng.normal(0, 0.03, image.shape), 0, 1)
    return Scene((image * 255).astype(np.uint8), objects, depth.astype(np.float32))


def cache_root() -> Path:
    """Where generated datasets are cached: $BENCH_CACHE, else ~/.cache/bench."""
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def cached_view(name: str, write: Callable[[Path], None]) -> Path:
    """``cache_root()/name``, written once by ``write(folder)`` into a temporary folder renamed into place.

    ``name`` must change whenever the view's content would (a version, the seed, sizes, split sizes);
    the rename is atomic, so a concurrent or interrupted run never sees half a dataset.
    """
    path = cache_root() / name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{name}-"))
    try:
        follow_umask(tmp)  # mkdtemp makes it private; a cache shared by a group follows the umask
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:  # Ctrl-C or a failing writer too: never leave a half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not (isinstance(err, OSError) and path.exists()):  # a concurrent run may have renamed its copy first
            raise
    return path


def png_bytes(array: np.ndarray) -> bytes:
    """``array`` encoded as PNG (uint8 RGB or grey, uint16 depth), for a view's Hugging Face image column."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def open_image(value: dict) -> Image.Image:
    """The image of an undecoded Hugging Face image value: its bytes (a generated view) or its path (user files)."""
    return Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])

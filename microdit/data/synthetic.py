"""The synthetic captioned dataset: the embedded default, no download.

Each image shows one or two flat shapes on a plain background, drawn with 4x supersampling.
Ten shape classes (as cifar-captions has ten classes), eight colours, two sizes, five positions
(one object) or a left/right or above/below relation (two objects), four backgrounds. Captions
come from varied templates; colour, position, count and the spatial relation are given only
in the text, so a model that ignores the caption is measurably worse. Every sample is a pure
function of (seed, index, size, scene).

Two scenes (``data.prepare_scene``):

- ``mixed`` (the default, described above): every attribute varies.
- ``one_object``: one large object in the middle of a white background, so only its shape and
  colour vary (and the captions' wording). On ``mixed`` the object is 8–13 pixels across, and
  the few boundary pixels that tell a hexagon from a circle are a small part of the loss beside
  colour, place, size, background and a second object; on ``one_object`` they are not, so a CPU
  study can measure prompt following on shape as well as colour (results: experiments/README.md,
  "The CPU masking study").

:class:`SyntheticRecipe` names one synthetic latent dataset to build (folder, size, samples,
seed, scene, encoders) and its held-out split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from microdit.data.images import MAX_SIDE

if TYPE_CHECKING:
    from microdit.data.manifest import Manifest

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon", "heart", "bar")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 230), "yellow": (240, 210, 40),
           "purple": (140, 60, 200), "orange": (250, 140, 30), "cyan": (40, 200, 220), "pink": (240, 120, 180)}
BACKGROUNDS = {"black": (15, 15, 15), "white": (240, 240, 240), "gray": (128, 128, 128), "beige": (225, 210, 170)}
SIZES = {"small": 0.13, "large": 0.21}  # half-extent as a fraction of the image side
POSITIONS = {"left": (0.5, 0.27), "right": (0.5, 0.73), "top": (0.27, 0.5), "bottom": (0.73, 0.5),
             "center": (0.5, 0.5)}  # (row, column) centres as fractions
SCENES = ("mixed", "one_object")
MIN_SIDE = 8  # the smallest image side the shapes are drawn at
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                    "center": "in the middle"}
SUPERSAMPLE = 4


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` in unit coordinates (u right, v down; the shape spans about [-1, 1])."""
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    if shape == "circle":
        return r <= 1
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.85
    if shape == "triangle":
        return (v <= 0.75) & (abs(u) <= (v + 1) / 1.75 * 1.0)
    if shape == "diamond":
        return abs(u) + abs(v) <= 1
    if shape == "star":
        return r <= 0.45 + 0.55 * (0.5 + 0.5 * np.cos(5 * (theta + np.pi / 2)))
    if shape == "cross":
        return ((abs(u) <= 0.3) & (abs(v) <= 1)) | ((abs(v) <= 0.3) & (abs(u) <= 1))
    if shape == "ring":
        return (r <= 1) & (r >= 0.55)
    if shape == "hexagon":
        return np.maximum(abs(u) * 0.866 + abs(v) * 0.5, abs(v)) <= 0.9
    if shape == "heart":
        x, y = u * 1.2, -v * 1.2 + 0.25
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    if shape == "bar":
        return (abs(u) <= 1) & (abs(v) <= 0.35)
    raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")


@dataclass
class SyntheticSample:
    """One synthetic sample: RGB uint8 image (H, W, 3), caption, labels."""

    image: np.ndarray
    caption: str
    labels: dict


def _draw(size: int, background: str, objects: list[dict], rng: np.random.Generator) -> np.ndarray:
    n = size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    canvas = np.empty((n, n, 3), dtype=np.float32)
    canvas[:] = BACKGROUNDS[background]
    for obj in objects:
        extent = SIZES[obj["size"]]
        u = (cols - obj["centre"][1]) / extent
        v = (rows - obj["centre"][0]) / extent
        colour = np.clip(np.array(COLOURS[obj["colour"]]) + rng.integers(-12, 13, 3), 0, 255)
        canvas[_inside(obj["shape"], u, v)] = colour
    image = canvas.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.round(image).astype(np.uint8)


def _a(phrase: str) -> str:
    """The phrase with its indefinite article."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _caption_single(o: dict, background: str, rng: np.random.Generator) -> str:
    where = POSITION_PHRASES[o["position"]]
    thing = f"{o['colour']} {o['shape']}"
    templates = [
        f"{_a(o['size'] + ' ' + thing)} on {_a(background)} background",
        f"{_a(thing)} {where}",
        f"{o['size']} {thing} {where}, {background} background",
        f"a picture of {_a(thing)} {where}",
        f"one {thing} {where} against {background}",
        f"{_a(thing)}, {o['size']}, {where} of {_a(background)} image",
    ]
    return templates[rng.integers(len(templates))]


def _caption_pair(a: dict, b: dict, horizontal: bool, background: str, rng: np.random.Generator) -> str:
    first, second = (f"{x['colour']} {x['shape']}" for x in (a, b))
    forward = "to the left of" if horizontal else "above"
    backward = "to the right of" if horizontal else "below"
    templates = [
        f"{_a(first)} {forward} {_a(second)}",
        f"{_a(second)} {backward} {_a(first)}",
        f"two shapes on {_a(background)} background: {_a(first)} {forward} {_a(second)}",
        f"{_a(a['size'] + ' ' + first)} {forward} {_a(b['size'] + ' ' + second)}",
        f"two objects, {_a(second)} {backward} {_a(first)}, on {background}",
    ]
    return templates[rng.integers(len(templates))]


def synthetic_sample(seed: int, index: int, size: int = 32, scene: str = "mixed") -> SyntheticSample:
    """The sample ``index`` of the synthetic dataset with ``seed``, drawn at ``size`` x ``size``, of
    ``scene`` (one of :data:`SCENES`, see the module docstring)."""
    if not MIN_SIDE <= size <= MAX_SIDE:
        raise ValueError(f"synthetic image size must be in [{MIN_SIDE}, {MAX_SIDE}] (the paper's largest is 512), "
                         f"got {size}")
    if scene not in SCENES:
        raise ValueError(f"synthetic scene must be one of {SCENES}, got {scene!r}")
    rng = np.random.default_rng([seed, index])
    one_object = scene == "one_object"
    background = "white" if one_object else list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    count = 1 if one_object else 1 + int(rng.random() < 0.35)

    def new_object() -> dict:
        return {"shape": SHAPES[rng.integers(len(SHAPES))], "colour": list(COLOURS)[rng.integers(len(COLOURS))],
                "size": "large" if one_object else list(SIZES)[rng.integers(len(SIZES))]}

    objects = [new_object() for _ in range(count)]
    jitter = rng.uniform(-0.04, 0.04, size=(count, 2))
    if count == 1:
        position = "center" if one_object else list(POSITIONS)[rng.integers(len(POSITIONS))]
        objects[0]["position"] = position
        objects[0]["centre"] = tuple(np.add(POSITIONS[position], jitter[0]))
        caption = _caption_single(objects[0], background, rng)
    else:
        horizontal = bool(rng.random() < 0.5)
        first, second = ("left", "right") if horizontal else ("top", "bottom")
        for obj, pos, j in zip(objects, (first, second), jitter, strict=True):
            obj["position"] = pos
            obj["centre"] = tuple(np.add(POSITIONS[pos], j))
        caption = _caption_pair(objects[0], objects[1], horizontal, background, rng)
    image = _draw(size, background, objects, rng)
    first_obj = objects[0]
    labels = {
        "class": SHAPES.index(first_obj["shape"]),
        "shape": first_obj["shape"], "colour": first_obj["colour"], "size": first_obj["size"],
        "position": first_obj["position"], "background": background, "count": count,
        "objects": [{k: o[k] for k in ("shape", "colour", "size", "position")} for o in objects],
    }
    return SyntheticSample(image, caption, labels)


def synthetic_samples(seed: int, num: int, size: int,
                      scene: str = "mixed") -> Iterator[tuple[str, np.ndarray, str, dict]]:
    """The first ``num`` samples as ``(key, image, caption, labels)``, as image shards store them."""
    for i in range(num):
        s = synthetic_sample(seed, i, size, scene)
        yield f"{i:08d}", s.image, s.caption, s.labels


def synthetic_source(seed: int, scene: str = "mixed") -> str:
    """The ``source`` an image dataset of these samples records in its manifest."""
    return f"synthetic(seed={seed})" if scene == "mixed" else f"synthetic(seed={seed}, scene={scene})"


@dataclass(frozen=True)
class SyntheticRecipe:
    """One synthetic latent dataset: ``samples`` images of ``size`` px of ``scene`` drawn with
    ``seed``, encoded with ``autoencoder`` and ``text_encoder`` into ``folder`` (its images in
    ``folder-images``). With ``latent_size`` (a stage at its own resolution) the images are as
    large as the autoencoder needs for latents of that side, whatever ``size`` says."""

    folder: str
    samples: int
    size: int
    seed: int
    autoencoder: str
    text_encoder: str
    scene: str = "mixed"
    latent_size: int | None = None

    def held_out(self, samples: int) -> SyntheticRecipe:
        """Its held-out split: ``samples`` images drawn with the next seed into ``FOLDER-eval``."""
        return dataclasses.replace(self, folder=self.folder + "-eval", samples=samples, seed=self.seed + 1)

    def probe_split(self, samples: int) -> SyntheticRecipe:
        """A split for the probe that no generator trains or is evaluated on: ``samples`` images
        drawn with the seed after the held-out split's into ``FOLDER-probe``."""
        return dataclasses.replace(self, folder=self.folder + "-probe", samples=samples, seed=self.seed + 2)

    def differs(self, manifest: Manifest, size: int | None = None) -> str | None:
        """What a built dataset's ``manifest`` holds where it is not this recipe's sample count
        and size (its latents; or with ``size``, its images of that side), else None."""
        if size is None and self.latent_size:
            found, wanted, unit = (manifest.latent_shape or [0])[-2:], [self.latent_size] * 2, ("latents of ", "")
        else:
            found, wanted, unit = manifest.image_size, [size or self.size] * 2, ("images of ", " px")
        if manifest.samples == self.samples and found == wanted:
            return None
        side = "x".join(map(str, found or ["?"]))
        return (f"{manifest.samples} synthetic {unit[0]}{side}{unit[1]}, not the {self.samples} of "
                f"{wanted[0]}x{wanted[1]}{unit[1]} asked for")

"""A generated stand-in for the landmark dataset, used only when the real one is unavailable.

Each class is a kind of "landmark" drawn procedurally (a tower, a pyramid, an arch, ...) on a
random sky and ground, at a random position, scale and colour, with clutter (trees, clouds,
birds), occluders, blur and sensor noise. Some classes are deliberately alike (tower and
lighthouse, pyramid and mountains, arch and bridge, dome and wheel) so accuracy is not a
trivial 100%. The images are written as JPEGs in the real dataset's layout
(`train/NN.Name/*.jpg`, `test/NN.Name/*.jpg`), so every other module treats both the same.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

Color = tuple[int, int, int]
Box = tuple[float, float, float, float]  # x centre, base y, width, height (pixels)


def _jitter(rng: random.Random, color: Color, amount: int = 30) -> Color:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in color)  # type: ignore[return-value]


def _stone(rng: random.Random) -> Color:
    return _jitter(rng, rng.choice([(200, 190, 170), (150, 140, 130), (210, 200, 190), (170, 120, 90)]), 25)


def _tower(d: ImageDraw.ImageDraw, rng: random.Random, b: Box) -> None:
    x, y, w, h = b
    w = w * 0.3
    color = _stone(rng)
    d.rectangle([x - w / 2, y - h * 0.8, x + w / 2, y], fill=color)
    d.polygon([(x - w / 2, y - h * 0.8), (x + w / 2, y - h * 0.8), (x, y - h)], fill=_jitter(rng, color, 40))
    for i in range(rng.randint(2, 5)):  # windows
        wy = y - h * 0.75 + i * h * 0.14
        d.rectangle([x - w * 0.15, wy, x + w * 0.15, wy + h * 0.05], fill=(40, 40, 50))


def _lighthouse(d: ImageDraw.ImageDraw, rng: random.Random, b: Box) -> None:
    x, y, w, h = b
    w = w * 0.35
    stripes = rng.randint(3, 6)
    for i in range(stripes):  # tapered, striped body
        top = y - h * 0.8 * (i + 1) / stripes
        bottom = y - h * 0.8 * i / stripes
        half_bottom = w / 2 * (1 - 0.4 * i / stripes)
        half_top = w / 2 * (1 - 0.4 * (i + 1) / stripes)
        color = (200, 30, 30) if i % 2 == 0 else (240, 240, 240)
        d.polygon([(x - half_bottom, bottom), (x + half_bottom, bottom), (x + half_top, top), (x - half_top, top)],
                  fill=_jitter(rng, color, 20))
    d.rectangle([x - w * 0.2, y - h * 0.92, x + w * 0.2, y - h * 0.8], fill=(250, 230, 120))
    d.polygon([(x - w * 0.25, y - h * 0.92), (x + w * 0.25, y - h * 0.92), (x, y - h)], fill=(60, 60, 60))


def _pyramid(d: ImageDraw.ImageDraw, rng: random.Random, b: Box) -> None:
    x, y, w, h = b
    color = _jitter(rng, (210, 180, 110), 25)
    d.polygon([(x - w / 2, y), (x + w / 2, y), (x + rng.uniform(-0.05, 0.05) * w, y - h * 0.7)], fill=color)
    d.polygon([(x, y), (x + w / 2, y), (x, y - h * 0.7)], fill=_jitter(rng, (150, 120, 70), 20))


def _mountains(d: ImageDraw.ImageDraw, rng: random.Random, b: Box) -> None:
    x, y, w, h = b
    steps = rng.randint(3, 5) * 2
    points = [(x - w / 2, y)]
    for i in range(1, steps):  # alternating peaks and saddles
        points.append((x - w / 2 + w * i / steps, y - h * (rng.uniform(0.4, 0.8) if i % 2 else rng.uniform(0.1, 0.35))))
    points.append((x + w / 2, y))
    d.polygon(points, fill=_jitter(rng, (110, 100, 110), 30))
    for px, py in points[1:-1]:
        if py < y - h * 0.4:  # snow caps
            d.polygon([(px, py), (px - w * 0.04, py + h * 0.1), (px + w * 0.04, py + h * 0.1)], fill=(245, 245, 250))


def _arch(d: ImageDraw.ImageDraw, rng: random.Random, b: Box) -> None:
    x, y, w, h = b
    w, h = w * 0.6, h * 0.7
    color = _stone(rng)
    d.rectangle([x - w / 2, y - h, x + w / 2, y], fill=color)
    d.rectangle([x - w / 2 - w * 0.05, y - h, x + w / 2 + w * 0.05, y - h * 0.88], fill=_jitter(rng, color, 30))
    d.rectangle([x - w * 0.25, y - h * 0.45, x + w * 0.25, y], fill=_sky_at(rng))
    d.ellipse([x - w * 0.25, y - h * 0.7, x + w * 0.25, y - h * 0.2], fill=_sky_at(rng))


def _bridge(d: ImageDraw.ImageDraw, rng: random.Random, b: Box) -> None:
    x, y, w, h = b
    h = h * 0.5
    color = _jitter(rng, rng.choice([(190, 60, 40), (120, 120, 130), (60, 60, 70)]), 20)
    deck = y - h * 0.3
    d.rectangle([x - w / 2, deck - h * 0.06, x + w / 2, deck], fill=color)
    for px in (x - w * 0.25, x + w * 0.25):  # pylons and cables
        d.rectangle([px - w * 0.02, y - h, px + w * 0.02, y], fill=color)
        for k in range(1, 5):
            d.line([(px, y - h), (px - w * 0.06 * k, deck)], fill=color, width=1)
            d.line([(px, y - h), (px + w * 0.06 * k, deck)], fill=color, width=1)


def _dome(d: ImageDraw.ImageDraw, rng: random.Random, b: Box) -> None:
    x, y, w, h = b
    w = w * 0.7
    color = _stone(rng)
    d.rectangle([x - w / 2, y - h * 0.35, x + w / 2, y], fill=color)
    d.pieslice([x - w * 0.35, y - h * 0.95, x + w * 0.35, y - h * 0.2], 180, 360,
               fill=_jitter(rng, rng.choice([(90, 140, 120), (200, 170, 60), (230, 230, 230)]), 25))
    d.rectangle([x - w * 0.02, y - h, x + w * 0.02, y - h * 0.58], fill=(80, 80, 80))


def _wheel(d: ImageDraw.ImageDraw, rng: random.Random, b: Box) -> None:
    x, y, w, h = b
    r = min(w, h) * 0.42
    cy = y - r - h * 0.1
    color = _jitter(rng, rng.choice([(240, 240, 240), (60, 60, 80), (200, 60, 60)]), 20)
    d.ellipse([x - r, cy - r, x + r, cy + r], outline=color, width=max(1, int(r * 0.08)))
    for k in range(8):
        angle = k * math.pi / 4 + rng.uniform(0, 0.3)
        d.line([(x, cy), (x + r * math.cos(angle), cy + r * math.sin(angle))], fill=color, width=1)
    d.polygon([(x, cy), (x - r * 0.5, y), (x + r * 0.5, y)], outline=color)


def _temple(d: ImageDraw.ImageDraw, rng: random.Random, b: Box) -> None:
    x, y, w, h = b
    h = h * 0.6
    color = _stone(rng)
    d.rectangle([x - w / 2, y - h * 0.1, x + w / 2, y], fill=color)
    columns = rng.randint(4, 8)
    for i in range(columns):
        cx = x - w / 2 + w * (i + 0.5) / columns
        d.rectangle([cx - w * 0.025, y - h * 0.75, cx + w * 0.025, y - h * 0.1], fill=_jitter(rng, color, 15))
    d.rectangle([x - w / 2, y - h * 0.85, x + w / 2, y - h * 0.75], fill=color)
    d.polygon([(x - w / 2, y - h * 0.85), (x + w / 2, y - h * 0.85), (x, y - h)], fill=_jitter(rng, color, 20))


LANDMARKS: dict[str, Callable[[ImageDraw.ImageDraw, random.Random, Box], None]] = {
    "Stand_in_Tower": _tower,
    "Stand_in_Pyramid": _pyramid,
    "Stand_in_Arch": _arch,
    "Stand_in_Dome": _dome,
    "Stand_in_Lighthouse": _lighthouse,
    "Stand_in_Mountains": _mountains,
    "Stand_in_Bridge": _bridge,
    "Stand_in_Wheel": _wheel,
    "Stand_in_Temple": _temple,
}


def _sky_at(rng: random.Random) -> Color:
    return _jitter(rng, rng.choice([(130, 180, 235), (250, 170, 120), (90, 100, 140), (200, 205, 210)]), 25)


def draw_scene(kind: str, rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """One random photo-like image of landmark `kind` (a key of LANDMARKS)."""
    width, height = size
    image = Image.new("RGB", size)
    d = ImageDraw.Draw(image)
    top, bottom = _sky_at(rng), _sky_at(rng)
    horizon = int(height * rng.uniform(0.6, 0.85))
    for row in range(horizon):  # sky gradient
        t = row / max(1, horizon)
        d.line([(0, row), (width, row)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
    ground = _jitter(rng, rng.choice([(80, 130, 60), (190, 170, 120), (60, 90, 140), (120, 120, 120)]), 25)
    d.rectangle([0, horizon, width, height], fill=ground)
    for _ in range(rng.randint(0, 4)):  # clouds
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, horizon * 0.6), rng.uniform(0.05, 0.15) * width
        d.ellipse([cx - r, cy - r * 0.4, cx + r, cy + r * 0.4], fill=_jitter(rng, (240, 240, 245), 10))
    if rng.random() < 0.35:  # another landmark, smaller, in the distance: a confusing second subject
        other = rng.choice([k for k in LANDMARKS if k != kind])
        far = rng.uniform(0.15, 0.3)
        LANDMARKS[other](d, rng, (rng.choice([0.15, 0.85]) * width, horizon, far * width, far * horizon))
    scale = rng.uniform(0.25, 0.9)
    box = (rng.uniform(0.3, 0.7) * width, horizon + rng.uniform(0, 0.1) * height,
           scale * width * rng.uniform(0.7, 1.1), scale * horizon)
    LANDMARKS[kind](d, rng, box)
    for _ in range(rng.randint(0, 6)):  # trees in front
        tx, ty, th = rng.uniform(0, width), rng.uniform(horizon, height), rng.uniform(0.05, 0.25) * height
        d.polygon([(tx - th * 0.3, ty), (tx + th * 0.3, ty), (tx, ty - th)], fill=_jitter(rng, (40, 90, 40), 25))
    for _ in range(rng.randint(0, 5)):  # birds
        bx, by = rng.uniform(0, width), rng.uniform(0, horizon * 0.7)
        d.line([(bx - 4, by - 2), (bx, by), (bx + 4, by - 2)], fill=(30, 30, 30), width=1)
    if rng.random() < 0.3:  # an occluder (a passer-by, a lamp post)
        ox, ow = rng.uniform(0, width), rng.uniform(0.05, 0.2) * width
        d.rectangle([ox, rng.uniform(0.3, 0.8) * height, ox + ow, height], fill=_jitter(rng, (50, 50, 60), 40))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    noise = Image.effect_noise(size, rng.uniform(5, 30)).convert("RGB")
    return Image.blend(image, noise, rng.uniform(0.05, 0.2))


def generate(root: Path, *, classes: int, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """Write the stand-in dataset under `root` (train/ and test/), unless a complete copy is there.

    A `standin.json` written last marks a complete dataset, so an interrupted run regenerates it."""
    if not 1 <= classes <= len(LANDMARKS):
        raise ValueError(f"the stand-in has 1..{len(LANDMARKS)} classes, got {classes}")
    spec = {"classes": classes, "train_per_class": train_per_class, "test_per_class": test_per_class,
            "seed": seed, "version": 1}
    marker = root / "standin.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    rng = random.Random(seed)
    jobs = [(split, index, kind, n)
            for split, n in (("train", train_per_class), ("test", test_per_class))
            for index, kind in enumerate(list(LANDMARKS)[:classes])]
    total = sum(n for *_, n in jobs)
    with tqdm(total=total, desc="generating stand-in images", unit="img", leave=False) as bar:
        for split, index, kind, n in jobs:
            folder = root / split / f"{index:02d}.{kind}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                size = (rng.randint(200, 360), rng.randint(160, 270))  # landscape and portrait-ish
                draw_scene(kind, rng, size).save(folder / f"{kind.lower()}_{i:03d}.jpg", quality=85)
                bar.update()
    marker.write_text(json.dumps(spec, indent=2) + "\n")
    return root

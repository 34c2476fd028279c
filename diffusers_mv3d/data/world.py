"""The procedural 3D world: seeded generators of coloured, captioned objects (DESIGN.md §5).

``generate_object(category, seed, colour)`` draws a category's attributes from
``numpy.random.default_rng(seed)``, builds the mesh from coloured primitives (:mod:`.shapes`), and
writes a caption from the attributes. The same ``(category, seed)`` gives the same shape whatever
``colour`` is asked for, so colour swaps compare like with like.

Conventions: +z up, the object stands on its base; its front faces +x, the azimuth-0 camera of
:meth:`~diffusers_mv3d.cameras.Cameras.orbit`. The mesh is centred at the origin with its farthest
vertex at :data:`~.shapes.OBJECT_RADIUS` (0.9).

``chair`` is the ShapeNet-Chair analogue with Text2Shape-like captions; the other categories form
the mini-Objaverse analogue.
"""

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import trimesh

from .palette import ACCENTS, PALETTE
from .shapes import Part, assemble, box, cone, cylinder, disc, frustum, hull, sphere, torus

Parts = List[Part]


@dataclass
class ProceduralObject:
    """One generated object.

    Args:
        mesh: the coloured mesh (face colours), centred, inside the sphere of radius 0.9.
        caption: a natural-language description naming ``colour`` and ``category``.
        category: one of :data:`CATEGORIES`.
        colour: the main colour, a key of :data:`~.palette.PALETTE`, named in the caption.
        attributes: the drawn attributes (JSON-serialisable), including the part colours.
    """

    mesh: trimesh.Trimesh
    caption: str
    category: str
    colour: str
    attributes: Dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A digest of what the object is: its category, vertices (to 1e-5), faces and face colours.

        Objects of different seeds can come out identical (several categories draw only a few
        discrete attributes), so seeds alone do not keep two sets of objects apart; fingerprints do
        (:func:`~.splits.unseen_split_objects`).
        """
        digest = hashlib.sha256(self.category.encode())
        digest.update((np.round(np.asarray(self.mesh.vertices, dtype=np.float64), 5) + 0.0).tobytes())  # + 0.0: no -0.0
        digest.update(np.asarray(self.mesh.faces, dtype=np.int64).tobytes())
        digest.update(np.asarray(self.mesh.visual.face_colors, dtype=np.uint8).tobytes())
        return digest.hexdigest()


# ---------------------------------------------------------------------------------- captions
def _join(phrases: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    phrases = [p for p in phrases if p]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _describe(rng: np.random.Generator, noun: str, colour: str, adjective: str, features: Sequence[str]) -> str:
    """A caption for ``noun`` in one of six phrasings, naming the colour, one adjective and the features."""
    with_features = f" with {_join(features)}" if features else ""
    templates = [
        f"a {adjective} {colour} {noun}{with_features}",
        f"a {colour} {noun}{with_features}",
        f"{colour} {noun}, {adjective}" + (f", {_join(features)}" if features else ""),
        f"a {adjective} {noun} in {colour}{with_features}",
        f"this {noun} is {colour}" + (f" and has {_join(features)}" if features else f" and {adjective}"),
        f"a {colour} {adjective} {noun}",
    ]
    return templates[rng.integers(len(templates))]


def _accent(rng: np.random.Generator, colour: str, choices: Sequence[str] = ACCENTS) -> str:
    """A secondary colour from ``choices`` that differs from the main ``colour``.

    Always consumes exactly one draw, so the rest of the object does not depend on ``colour``.
    """
    options = [c for c in choices if c != colour]
    return str(options[int(rng.random() * len(options))])


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options`` as a plain ``str``."""
    return str(options[rng.integers(len(options))])


# ---------------------------------------------------------------------------------- chair
_CHAIR_LEGS = ("four straight", "four cylindrical", "three", "swivel")
_SEAT_HEIGHT = {"low": 0.28, "regular": 0.45, "tall": 0.72}
_BACK_HEIGHT = {"none": 0.0, "low": 0.25, "medium": 0.42, "tall": 0.62}


def _chair_legs(style: str, seat_w: float, seat_d: float, top: float, colour: str) -> Parts:
    """Legs from the floor to the seat underside ``top``; the seat spans ``seat_d`` (x) by ``seat_w`` (y)."""
    x, y = 0.42 * seat_d, 0.42 * seat_w
    if style == "four straight":
        return [box((0.045, 0.045, top), (sx * x, sy * y, top / 2), colour) for sx in (-1, 1) for sy in (-1, 1)]
    if style == "four cylindrical":
        return [cylinder(0.024, (sx * x, sy * y, 0), (sx * x, sy * y, top), colour, 12) for sx in (-1, 1) for sy in (-1, 1)]
    if style == "three":
        angles = np.deg2rad([0, 120, 240])
        r = 0.4 * min(seat_w, seat_d)
        return [
            cylinder(0.014, (1.25 * r * np.cos(a), 1.25 * r * np.sin(a), 0), (r * np.cos(a), r * np.sin(a), top), colour, 10)
            for a in angles
        ]
    # swivel: a column on a five-spoke star with casters
    parts = [cylinder(0.03, (0, 0, 0.07), (0, 0, top), colour, 12)]
    for a in np.deg2rad(np.arange(5) * 72.0):
        end = (0.3 * np.cos(a), 0.3 * np.sin(a), 0.05)
        parts += [cylinder(0.018, (0, 0, 0.07), end, colour, 8), sphere(0.03, (end[0], end[1], 0.03), "black")]
    return parts


def _chair_back(style: str, height: float, width: float, x: float, bottom: float, colour: str) -> Parts:
    """A back of ``style`` at the rear edge ``x``, from ``bottom`` up ``height``, ``width`` wide (y)."""
    if height == 0:
        return []
    mid = bottom + height / 2
    if style == "solid":
        return [box((0.05, width, height), (x, 0, mid), colour)]
    posts = [box((0.045, 0.045, height), (x, sy * (width / 2 - 0.022), mid), colour) for sy in (-1, 1)]
    rail = box((0.045, width, 0.06), (x, 0, bottom + height - 0.03), colour)
    if style == "slatted":
        slats = [box((0.03, 0.035, height), (x, y, mid), colour) for y in np.linspace(-width / 4, width / 4, 3)]
    else:  # ladder: horizontal rungs
        slats = [box((0.03, width, 0.035), (x, 0, z), colour) for z in bottom + height * np.array([0.3, 0.55])]
    return posts + [rail] + slats


def _chair(rng: np.random.Generator, colour: str) -> Tuple[Parts, Dict, str]:
    """The ShapeNet-Chair analogue: legs, seat, back, armrests and their colours."""
    legs = _pick(rng, _CHAIR_LEGS)
    seat_shape = _pick(rng, ("square", "rectangular", "round"))
    seat_height = _pick(rng, ("low", "regular", "regular", "tall"))
    back_height = _pick(rng, ("none", "low", "medium", "medium", "tall", "tall"))
    back_style = _pick(rng, ("solid", "slatted", "ladder"))
    armrests = bool(rng.random() < 0.4) and back_height != "none"
    leg_colour = colour if rng.random() < 0.5 else _accent(rng, colour)
    seat_d = rng.uniform(0.42, 0.5)
    seat_w = seat_d * (1.25 if seat_shape == "rectangular" else 1.0)
    thickness = rng.uniform(0.04, 0.07)
    top = _SEAT_HEIGHT[seat_height]

    parts = _chair_legs(legs, seat_w, seat_d, top - thickness, leg_colour)
    if seat_shape == "round":
        parts.append(disc(seat_d / 2, thickness, (0, 0, top - thickness / 2), colour))
    else:
        parts.append(box((seat_d, seat_w, thickness), (0, 0, top - thickness / 2), colour))
    back_w = seat_w * (0.8 if seat_shape == "round" else 1.0)
    back_x = -seat_d / 2 * (0.8 if seat_shape == "round" else 1.0) + 0.025
    parts += _chair_back(back_style, _BACK_HEIGHT[back_height], back_w, back_x, top, colour)
    if armrests:
        for sy in (-1, 1):
            y = sy * (seat_w / 2 - 0.02)
            parts.append(box((seat_d * 0.9, 0.05, 0.035), (0, y, top + 0.21), colour))
            parts.append(box((0.035, 0.035, 0.21), (seat_d * 0.38, y, top + 0.105), colour))

    attributes = dict(
        legs=legs, seat_shape=seat_shape, seat_height=seat_height, back_height=back_height,
        back_style=back_style if back_height != "none" else "none", armrests=armrests, leg_colour=leg_colour,
    )
    return parts, attributes, _chair_caption(rng, colour, attributes)


def _chair_caption(rng: np.random.Generator, colour: str, a: Dict) -> str:
    """A Text2Shape-like caption of a chair in one of six phrasings."""
    leg_words = {
        "four straight": "four straight legs", "four cylindrical": "four round legs",
        "three": "three thin legs", "swivel": "a swivel base",
    }[a["legs"]]
    if a["leg_colour"] != colour:
        leg_words = leg_words.replace("legs", f"{a['leg_colour']} legs").replace("base", f"{a['leg_colour']} base")
    if a["back_height"] == "none":
        back = "no back"
    else:
        style = "" if a["back_style"] == "solid" else f"{a['back_style']} "
        back = f"a {a['back_height']} {style}back" if a["back_height"] != "medium" else f"a {style}back"
    arms = "armrests" if a["armrests"] else "no armrests"
    height = {"low": "low ", "regular": "", "tall": "tall "}[a["seat_height"]]
    templates = [
        f"a {colour} chair with {back} and {arms}",
        f"a {height}{colour} chair on {leg_words}",
        f"{colour} chair, {a['seat_shape']} seat, {leg_words}, {arms}",
        f"this chair is {colour}. it has {_join([back, leg_words, arms])}.",
        f"a chair with a {colour} {a['seat_shape']} seat, {back} and {leg_words}",
        f"a {height}{colour} {'office ' if a['legs'] == 'swivel' else ''}chair with {back}",
    ]
    return templates[rng.integers(len(templates))]


# ---------------------------------------------------------------------------------- mini-Objaverse
def _table(rng, colour):
    """Round, square or long tops on four legs or one pedestal; coffee, dining or bar height."""
    top_shape = _pick(rng, ("round", "square", "rectangular"))
    kind = _pick(rng, ("coffee", "dining", "bar"))
    support = _pick(rng, ("four legs", "pedestal"))
    leg_colour = colour if rng.random() < 0.5 else _accent(rng, colour)
    h = {"coffee": 0.4, "dining": 0.75, "bar": 1.05}[kind]
    d = rng.uniform(0.7, 0.9) * (0.8 if kind == "bar" else 1.0)
    w = d * (1.6 if top_shape == "rectangular" else 1.0)
    t = 0.05
    parts = [disc(d / 2, t, (0, 0, h - t / 2), colour) if top_shape == "round" else box((d, w, t), (0, 0, h - t / 2), colour)]
    if support == "pedestal":
        parts += [cylinder(0.05, (0, 0, 0), (0, 0, h - t), leg_colour), disc(0.22 * d, 0.04, (0, 0, 0.02), leg_colour)]
    else:
        x, y = (0.3 * d, 0.3 * d) if top_shape == "round" else (0.42 * d, 0.42 * w)
        parts += [box((0.06, 0.06, h - t), (sx * x, sy * y, (h - t) / 2), leg_colour) for sx in (-1, 1) for sy in (-1, 1)]
    adjective = {"coffee": "low", "dining": top_shape, "bar": "tall"}[kind]
    features = ["a single pedestal" if support == "pedestal" else "four legs"]
    if leg_colour != colour:
        features[0] = features[0].replace("legs", f"{leg_colour} legs").replace("a single", f"a {leg_colour}")
    attributes = dict(top_shape=top_shape, kind=kind, support=support, leg_colour=leg_colour)
    noun = "coffee table" if kind == "coffee" else "table"
    return parts, attributes, _describe(rng, noun, colour, adjective, features)


def _sofa(rng, colour):
    """Two or three seats, with or without arms, low or high back, short legs."""
    seats = int(rng.choice([2, 3]))
    arms = bool(rng.random() < 0.7)
    back = _pick(rng, ("low", "high"))
    leg_colour = _accent(rng, colour)
    length, depth = 0.65 * seats, 0.85
    parts = [box((depth, length, 0.2), (0, 0, 0.2), colour)]
    parts += [box((depth * 0.8, length / seats - 0.03, 0.12), (0.08, (i - (seats - 1) / 2) * length / seats, 0.36), colour)
              for i in range(seats)]
    back_h = 0.45 if back == "low" else 0.7
    parts.append(box((0.2, length, back_h), (-depth / 2 + 0.1, 0, 0.1 + back_h / 2), colour))
    if arms:
        parts += [box((depth, 0.16, 0.55), (0, sy * (length / 2 + 0.08), 0.375), colour) for sy in (-1, 1)]
    half = length / 2 + (0.14 if arms else 0) - 0.05
    parts += [cylinder(0.03, (sx * 0.35, sy * half, 0), (sx * 0.35, sy * half, 0.1), leg_colour, 10)
              for sx in (-1, 1) for sy in (-1, 1)]
    features = [f"{['', '', 'two', 'three'][seats]} seats", f"a {back} back"] + (["armrests"] if arms else [])
    attributes = dict(seats=seats, arms=arms, back=back, leg_colour=leg_colour)
    return parts, attributes, _describe(rng, "sofa", colour, "long" if seats == 3 else "small", features)


def _lamp(rng, colour):
    """A desk or floor lamp: base, stem and a drum or cone shade in the main colour."""
    kind = _pick(rng, ("desk", "floor"))
    base = _pick(rng, ("round", "square"))
    shade = _pick(rng, ("drum", "cone"))
    metal = _accent(rng, colour)
    h = 0.7 if kind == "desk" else 1.8
    parts = [disc(0.2, 0.05, (0, 0, 0.025), metal) if base == "round" else box((0.36, 0.36, 0.05), (0, 0, 0.025), metal)]
    parts.append(cylinder(0.025, (0, 0, 0.05), (0, 0, h), metal, 10))
    parts.append(frustum(0.22, 0.18 if shade == "drum" else 0.09, h - 0.1, h + 0.18, colour))
    features = [f"a {base} {metal} base", f"a {'drum' if shade == 'drum' else 'conical'} shade"]
    attributes = dict(kind=kind, base=base, shade=shade, base_colour=metal)
    noun = "floor lamp" if kind == "floor" else "lamp"
    return parts, attributes, _describe(rng, noun, colour, "tall" if kind == "floor" else "small", features)


def _mug(rng, colour):
    """A cylindrical mug: short or tall, a handle, maybe a stripe, maybe coffee in it."""
    height = _pick(rng, ("short", "tall"))
    stripe = bool(rng.random() < 0.4)
    coffee = bool(rng.random() < 0.5)
    stripe_colour = _accent(rng, colour)
    r, h = 0.4, (0.6 if height == "short" else 1.0)
    parts = [disc(r, h, (0, 0, h / 2), colour), torus(0.22, 0.05, (r, 0, h / 2), colour, axis="y")]
    if stripe:
        parts.append(disc(r * 1.02, 0.1, (0, 0, h * 0.6), stripe_colour))
    if coffee:
        parts.append(disc(r * 0.88, 0.02, (0, 0, h), "brown" if colour != "brown" else "black"))
    features = ["a handle"] + ([f"a {stripe_colour} stripe"] if stripe else []) + (["coffee inside"] if coffee else [])
    attributes = dict(height=height, stripe=stripe, stripe_colour=stripe_colour, coffee=coffee)
    return parts, attributes, _describe(rng, "mug", colour, height, features)


def _bottle(rng, colour):
    """A round or square bottle with shoulders, a neck, a cap and maybe a label."""
    shape = _pick(rng, ("round", "square"))
    height = _pick(rng, ("short", "tall"))
    label = bool(rng.random() < 0.5)
    cap = _accent(rng, colour)
    r, h = 0.25, (0.6 if height == "short" else 1.0)
    body = disc(r, h, (0, 0, h / 2), colour) if shape == "round" else box((2 * r, 2 * r, h), (0, 0, h / 2), colour)
    if shape == "round":
        shoulders = frustum(r, 0.07, h, h + 0.3, colour)
    else:
        corners = [(sx * r, sy * r, h) for sx in (-1, 1) for sy in (-1, 1)]
        shoulders = hull(corners + [(0.07 * np.cos(a), 0.07 * np.sin(a), h + 0.3) for a in np.linspace(0, 6, 12)], colour)
    parts = [body, shoulders]
    parts += [disc(0.07, 0.2, (0, 0, h + 0.25), colour), disc(0.085, 0.08, (0, 0, h + 0.37), cap)]
    if label:
        lab = "white" if colour != "white" else "grey"
        if shape == "round":
            parts.append(disc(r * 1.03, h * 0.35, (0, 0, h * 0.5), lab))
        else:
            parts.append(box((2.06 * r, 2.06 * r, h * 0.35), (0, 0, h * 0.5), lab))
    features = [f"a {cap} cap"] + (["a label"] if label else [])
    attributes = dict(shape=shape, height=height, label=label, cap_colour=cap)
    return parts, attributes, _describe(rng, "bottle", colour, shape if rng.random() < 0.5 else height, features)


def _rocket(rng, colour):
    """A cylinder body, nose cone, three or four fins, a porthole and a nozzle."""
    fins = int(rng.choice([3, 4]))
    shape = _pick(rng, ("slim", "stubby"))
    trim = _accent(rng, colour, ACCENTS + ("red",))
    r, h = (0.18, 1.2) if shape == "slim" else (0.28, 0.8)
    parts = [disc(r, h, (0, 0, 0.25 + h / 2), colour), cone(r, 0.45, (0, 0, 0.25 + h), trim),
             frustum(r * 0.7, r * 0.4, 0.05, 0.25, "grey")]
    for a in np.deg2rad(np.arange(fins) * 360.0 / fins + 45):
        c, s = np.cos(a), np.sin(a)
        root = [(r * 0.9 * c, r * 0.9 * s, z) for z in (0.22, 0.6)]
        tip = [(2.2 * r * c, 2.2 * r * s, 0.02), (2.2 * r * c, 2.2 * r * s, 0.25)]
        thick = np.array([-s, c, 0.0]) * 0.015
        pts = [np.add(p, sgn * thick) for p in root + tip for sgn in (-1, 1)]
        parts.append(hull(pts, trim))
    parts.append(sphere(r * 0.35, (r * 0.85, 0, 0.25 + h * 0.7), "cyan" if colour != "cyan" else "white", scale=(0.5, 1, 1)))
    features = [f"{['', '', '', 'three', 'four'][fins]} {trim} fins", "a round window"]
    attributes = dict(fins=fins, shape=shape, trim_colour=trim)
    return parts, attributes, _describe(rng, "rocket", colour, shape, features)


def _tree(rng, colour):
    """A trunk under pine cones, a round crown or a tall poplar crown in the main colour."""
    kind = _pick(rng, ("pine", "round", "poplar"))
    trunk = "brown" if colour != "brown" else "black"
    parts = [cylinder(0.09, (0, 0, 0), (0, 0, 0.6), trunk, 12)]
    if kind == "pine":
        layers = int(rng.integers(2, 5))
        for i in range(layers):
            parts.append(cone(0.6 - 0.12 * i, 0.6, (0, 0, 0.45 + 0.32 * i), colour))
    elif kind == "round":
        parts.append(sphere(0.55, (0, 0, 1.0), colour))
    else:
        parts.append(sphere(0.35, (0, 0, 1.2), colour, scale=(1, 1, 2.2)))
    features = [f"a {trunk} trunk"] + ([f"{['', '', 'two', 'three', 'four'][layers]} layers"] if kind == "pine" else [])
    attributes = dict(kind=kind, trunk_colour=trunk, layers=layers if kind == "pine" else 1)
    adjective = {"pine": "pine", "round": "round", "poplar": "tall"}[kind]
    return parts, attributes, _describe(rng, "tree", colour, adjective, features)


def _snowman(rng, colour):
    """Two or three stacked balls, a carrot nose, stick arms, maybe a top hat and a scarf."""
    balls = int(rng.choice([2, 3]))
    hat = bool(rng.random() < 0.6)
    scarf = bool(rng.random() < 0.4)
    scarf_colour = _accent(rng, colour, ("red", "blue", "green", "purple"))
    radii = [0.45, 0.33, 0.24] if balls == 3 else [0.45, 0.3]
    heights = [radii[0]]
    for below, r in zip(radii[:-1], radii[1:]):
        heights.append(heights[-1] + 0.8 * (below + r))  # balls sink into each other a little
    parts = [sphere(r, (0, 0, z), colour) for r, z in zip(radii, heights)]
    head_r, head_z, body_r, body_z = radii[-1], heights[-1], radii[-2], heights[-2]
    nose = cone(0.04, 0.22, (head_r * 0.9, 0, head_z), "orange", 10, axis=(1, 0, 0))
    parts += [nose] + [sphere(0.03, (head_r * 0.85, sy * 0.08, head_z + 0.08), "black") for sy in (-1, 1)]
    for sy in (-1, 1):
        parts.append(cylinder(0.02, (0, sy * body_r * 0.9, body_z), (0, sy * (body_r + 0.35), body_z + 0.2), "brown", 6))
    if hat:
        parts += [disc(head_r * 0.95, 0.03, (0, 0, head_z + head_r * 0.85), "black"),
                  disc(head_r * 0.6, 0.28, (0, 0, head_z + head_r * 0.85 + 0.14), "black")]
    if scarf:
        parts.append(torus(head_r * 0.85, 0.05, (0, 0, head_z - head_r * 0.8), scarf_colour))
    features = ["a carrot nose"] + (["a top hat"] if hat else []) + ([f"a {scarf_colour} scarf"] if scarf else [])
    attributes = dict(balls=balls, hat=hat, scarf=scarf, scarf_colour=scarf_colour)
    return parts, attributes, _describe(rng, "snowman", colour, "tall" if balls == 3 else "small", features)


def _car(rng, colour):
    """A sedan, van or pickup: body, cabin, dark windows, four black wheels, maybe a spoiler."""
    style = _pick(rng, ("sedan", "van", "pickup"))
    spoiler = bool(rng.random() < 0.3) and style == "sedan"
    length, width, wheel = 1.4, 0.65, 0.16
    parts = [box((length, width, 0.28), (0, 0, wheel + 0.1), colour)]
    top = wheel + 0.24
    if style == "sedan":
        pts = [(x, sy * width * 0.45, z) for sy in (-1, 1) for x, z in ((-0.45, top), (0.3, top), (-0.3, top + 0.25), (0.1, top + 0.25))]
        parts.append(hull(pts, colour))
    elif style == "van":
        parts.append(box((1.1, width * 0.95, 0.4), (-0.12, 0, top + 0.2), colour))
    else:
        parts.append(box((0.45, width * 0.92, 0.3), (0.2, 0, top + 0.15), colour))
        parts.append(box((0.7, 0.04, 0.12), (-0.35, width / 2 - 0.02, top + 0.06), colour))
        parts.append(box((0.7, 0.04, 0.12), (-0.35, -width / 2 + 0.02, top + 0.06), colour))
    glass = "black" if colour != "black" else "grey"
    window_x = {"sedan": 0.22, "van": 0.43, "pickup": 0.43}[style]
    window_z = {"sedan": top + 0.1, "van": top + 0.25, "pickup": top + 0.17}[style]
    parts.append(box((0.02, width * 0.8, 0.14), (window_x, 0, window_z), glass))
    parts += [cylinder(wheel, (sx * 0.45, sy * width / 2 - sy * 0.06, wheel), (sx * 0.45, sy * width / 2 + sy * 0.04, wheel), "black")
              for sx in (-1, 1) for sy in (-1, 1)]
    if spoiler:
        parts += [box((0.1, width, 0.03), (-0.65, 0, top + 0.14), colour), box((0.04, 0.04, 0.12), (-0.65, 0, top + 0.06), colour)]
    style_feature = {"sedan": "a sloped roof", "van": "a tall cabin", "pickup": "an open back"}[style]
    features = [style_feature, "four black wheels"] + (["a spoiler"] if spoiler else [])
    attributes = dict(style=style, spoiler=spoiler)
    adjective = "sporty" if spoiler else {"sedan": "small", "van": "boxy", "pickup": "rugged"}[style]
    return parts, attributes, _describe(rng, "car", colour, adjective, features)


def _house(rng, colour):
    """Walls in the main colour, one or two storeys, a pitched or flat roof, door, windows, chimney."""
    storeys = int(rng.choice([1, 2]))
    roof = _pick(rng, ("pitched", "flat"))
    chimney = bool(rng.random() < 0.5)
    roof_colour = _accent(rng, colour, ("red", "brown", "black", "grey"))
    d, w, h = 1.0, 1.2, 0.55 * storeys
    parts = [box((d, w, h), (0, 0, h / 2), colour)]
    if roof == "pitched":
        pts = [(x, y, z) for y in (-w / 2 - 0.06, w / 2 + 0.06) for x, z in ((-d / 2 - 0.08, h), (d / 2 + 0.08, h), (0, h + 0.45))]
        parts.append(hull(pts, roof_colour))
    else:
        parts.append(box((d + 0.08, w + 0.08, 0.08), (0, 0, h + 0.04), roof_colour))
    door = "brown" if colour != "brown" else "black"
    parts.append(box((0.03, 0.22, 0.36), (d / 2 + 0.01, -0.25, 0.18), door))
    window = "cyan" if colour != "cyan" else "white"
    for level in range(storeys):
        z = 0.33 + 0.55 * level
        parts += [box((0.03, 0.2, 0.16), (d / 2 + 0.01, y, z), window) for y in ((0.25,) if level == 0 else (-0.25, 0.25))]
        parts += [box((0.2, 0.03, 0.16), (0, sy * (w / 2 + 0.01), z), window) for sy in (-1, 1)]
    if chimney:
        parts.append(box((0.14, 0.14, 0.4), (-0.2, 0.3, h + 0.3), roof_colour))
    features = [f"a {roof_colour} {roof} roof"] + (["a chimney"] if chimney else []) + (["two storeys"] if storeys == 2 else [])
    attributes = dict(storeys=storeys, roof=roof, chimney=chimney, roof_colour=roof_colour)
    return parts, attributes, _describe(rng, "house", colour, "tall" if storeys == 2 else "small", features)


def _bed(rng, colour):
    """A frame, mattress, a blanket in the main colour, pillows, a low or tall headboard."""
    size = _pick(rng, ("single", "double"))
    headboard = _pick(rng, ("low", "tall"))
    footboard = bool(rng.random() < 0.5)
    frame = _accent(rng, colour)
    w, length = (0.9 if size == "single" else 1.5), 2.0
    sheet = "white" if colour != "white" else "grey"
    parts = [box((length, w, 0.25), (0, 0, 0.2), frame), box((length * 0.95, w * 0.95, 0.18), (0.02, 0, 0.41), sheet)]
    parts.append(box((length * 0.65, w * 0.98, 0.2), (0.3, 0, 0.43), colour))
    parts.append(box((0.08, w, 0.6 if headboard == "low" else 1.0), (-length / 2, 0, (0.6 if headboard == "low" else 1.0) / 2), frame))
    if footboard:
        parts.append(box((0.08, w, 0.45), (length / 2, 0, 0.225), frame))
    pillows = 1 if size == "single" else 2
    parts += [box((0.3, 0.5 if size == "single" else 0.55, 0.1), (-length / 2 + 0.25, y, 0.55), sheet)
              for y in ([0.0] if pillows == 1 else [-0.35, 0.35])]
    features = [f"a {headboard} {frame} headboard"] + (["a footboard"] if footboard else []) + (["two pillows"] if pillows == 2 else ["a pillow"])
    attributes = dict(size=size, headboard=headboard, footboard=footboard, frame_colour=frame)
    return parts, attributes, _describe(rng, "bed", colour, size, features)


def _bench(rng, colour):
    """A park bench: slatted or solid seat, slab or four legs, maybe a backrest."""
    seat = _pick(rng, ("slatted", "solid"))
    legs = _pick(rng, ("slab", "four"))
    backrest = bool(rng.random() < 0.5)
    leg_colour = _accent(rng, colour)
    length, depth, h = rng.uniform(1.4, 2.0), 0.45, 0.45
    if seat == "solid":
        parts = [box((depth, length, 0.06), (0, 0, h - 0.03), colour)]
    else:
        parts = [box((depth / 4 - 0.02, length, 0.05), (x, 0, h - 0.025), colour) for x in np.linspace(-1.5, 1.5, 4) * depth / 4]
    y = length / 2 - 0.15
    if legs == "slab":
        parts += [box((depth, 0.06, h - 0.05), (0, sy * y, (h - 0.05) / 2), leg_colour) for sy in (-1, 1)]
    else:
        parts += [box((0.05, 0.05, h - 0.05), (sx * depth * 0.4, sy * y, (h - 0.05) / 2), leg_colour) for sx in (-1, 1) for sy in (-1, 1)]
    if backrest:
        parts += [box((0.04, 0.05, 0.45), (-depth / 2, sy * y, h + 0.2), leg_colour) for sy in (-1, 1)]
        parts += [box((0.04, length, 0.09), (-depth / 2 + 0.03, 0, h + z), colour) for z in (0.2, 0.36)]
    features = [f"a {seat} seat", f"{'two slab' if legs == 'slab' else 'four'} {leg_colour} legs"] + (["a backrest"] if backrest else [])
    attributes = dict(seat=seat, legs=legs, backrest=backrest, leg_colour=leg_colour, length=round(float(length), 3))
    return parts, attributes, _describe(rng, "bench", colour, "long" if length > 1.7 else "short", features)


def _airplane(rng, colour):
    """A fuselage with straight or swept wings, a tail, and zero, two or four engines."""
    wings = _pick(rng, ("straight", "swept"))
    engines = int(rng.choice([0, 2, 4]))
    trim = _accent(rng, colour)
    length, r = 1.8, 0.12
    parts = [cylinder(r, (-length / 2, 0, 0), (length / 2 - 0.1, 0, 0), colour, 16),
             sphere(r, (length / 2 - 0.1, 0, 0), colour, scale=(2.0, 1, 1))]
    sweep = 0.0 if wings == "straight" else 0.35
    for sy in (-1, 1):  # each wing and tailplane half is convex
        wing = ((0.15, 0.0), (-0.15, 0.0), (-0.05 - sweep, 0.9), (-0.2 - sweep, 0.9))
        tailplane = ((-0.7, 0.0), (-0.85, 0.0), (-0.9, 0.35), (-0.8, 0.35))
        for outline in (wing, tailplane):
            parts.append(hull([(x, sy * y, z) for z in (-0.02, 0.02) for x, y in outline], colour))
    parts.append(hull([(x, sy * 0.015, z) for sy in (-1, 1) for x, z in ((-0.65, 0.05), (-0.9, 0.05), (-0.95, 0.42), (-0.82, 0.42))], trim))
    for y in {0: [], 2: [0.4], 4: [0.3, 0.6]}[engines]:
        for sy in (-1, 1):
            x = -sweep * y / 0.9 + 0.05
            parts.append(cylinder(0.06, (x - 0.12, sy * y, -0.09), (x + 0.12, sy * y, -0.09), trim, 12))
    features = [f"{wings} wings", f"a {trim} tail"] + ([f"{['', '', 'two', '', 'four'][engines]} engines"] if engines else [])
    attributes = dict(wings=wings, engines=engines, trim_colour=trim)
    return parts, attributes, _describe(rng, "airplane", colour, "large" if engines == 4 else "small", features)


_GENERATORS: Dict[str, Callable[[np.random.Generator, str], Tuple[Parts, Dict, str]]] = {
    "chair": _chair,
    "table": _table,
    "sofa": _sofa,
    "lamp": _lamp,
    "mug": _mug,
    "bottle": _bottle,
    "rocket": _rocket,
    "tree": _tree,
    "snowman": _snowman,
    "car": _car,
    "house": _house,
    "bed": _bed,
    "bench": _bench,
    "airplane": _airplane,
}
CATEGORIES: List[str] = list(_GENERATORS)


def with_articles(caption: str) -> str:
    """``caption`` with "a" before a vowel made "an" ("a orange mug" -> "an orange mug"), as every
    caption of the world is written."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", caption)


def generate_object(category: str, seed: int, colour: Optional[str] = None) -> ProceduralObject:
    """Generate the object ``seed`` of ``category``, in ``colour`` (drawn from the palette when None).

    Deterministic: the same arguments give the same mesh and caption; the same ``category`` and
    ``seed`` give the same shape in every colour.
    """
    if category not in _GENERATORS:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    if colour is not None and colour not in PALETTE:
        raise ValueError(f"colour must be one of {sorted(PALETTE)} or None, got {colour!r}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    rng = np.random.default_rng(int(seed))
    drawn = _pick(rng, list(PALETTE))
    colour = colour or drawn
    parts, attributes, caption = _GENERATORS[category](rng, colour)
    return ProceduralObject(assemble(parts), with_articles(caption), category, colour, attributes)

"""Named splits of the procedural world: which category x colour combinations each may hold.

* ``chairs3d``: chairs for 3D tuning (the ShapeNet-Chair analogue), 3D-allowed colours only.
* ``objects3d``: every 3D-allowed category x colour (the mini-Objaverse analogue), chairs included.
* ``foundation2d``: every category x every colour, for the 2D foundation model. It is the only
  split holding :data:`HELD_OUT_CATEGORIES`, :data:`HELD_OUT_COLOURS` and :data:`HELD_OUT_PAIRS`:
  prompts for those measure how much of the foundation model's creativity survives 3D tuning.
* ``eval3d``: held-out objects of the 3D-allowed combinations, for image-to-multiview evaluation.

Each split draws its objects from its own seed range (:attr:`Split.code` fills the top bits of the
object seed), so no seed of one split is in another. Object ``index`` of a split depends only on
``(name, seed, index)``, not on how many objects are asked for, so a larger render extends a smaller
one. Seeds are not contents, though: several categories draw only a few discrete attributes, so
objects of different seeds, and of different splits, can be identical (45% of ``eval3d`` objects
equal one of the first 2000 ``objects3d`` objects). :func:`unseen_split_objects` picks the objects
whose content (:meth:`~.world.ProceduralObject.fingerprint`) a training set does not hold.
"""

import functools
from dataclasses import dataclass
from typing import AbstractSet, Dict, FrozenSet, Iterator, List, Tuple

import numpy as np

from .palette import PALETTE
from .world import CATEGORIES, ProceduralObject, generate_object

HELD_OUT_CATEGORIES: Tuple[str, ...] = ("snowman", "rocket")  # never in 3D data
HELD_OUT_COLOURS: Tuple[str, ...] = ("pink", "teal")  # never in 3D data
HELD_OUT_PAIRS = frozenset(  # one more colour a category, never in 3D data
    {
        ("chair", "green"), ("chair", "yellow"), ("table", "blue"), ("sofa", "red"), ("lamp", "yellow"),
        ("mug", "purple"), ("bottle", "cyan"), ("tree", "white"), ("car", "yellow"), ("house", "green"),
        ("bed", "orange"), ("bench", "red"), ("airplane", "purple"),
    }
)
TUNING_START = 1_000_000  # objects3d indices from here on are for tuning (training renders take the first thousands)
_SEED_BITS = 48  # object seeds of split ``code`` lie in [code * 2**48, (code + 1) * 2**48)


def is_in_3d_split(category: str, colour: str) -> bool:
    """Whether ``category`` in ``colour`` may appear in any 3D tuning split (False: 2D foundation only)."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    if colour not in PALETTE:
        raise ValueError(f"colour must be one of {sorted(PALETTE)}, got {colour!r}")
    return (
        category not in HELD_OUT_CATEGORIES and colour not in HELD_OUT_COLOURS and (category, colour) not in HELD_OUT_PAIRS
    )


@dataclass(frozen=True)
class Split:
    """A named split.

    Args:
        name: the split's name, a key of :data:`SPLITS`.
        code: a small integer unique to the split; its objects' seeds start at ``code * 2**48``.
        categories: the categories it draws from (uniformly).
        only_3d: keep only the combinations :func:`is_in_3d_split` allows.
        multiview: rendered as multi-view object folders (else as single-view image-text pairs).
        description: one line for ``--help`` and the docs.
    """

    name: str
    code: int
    categories: Tuple[str, ...]
    only_3d: bool
    multiview: bool
    description: str

    def colours(self, category: str) -> List[str]:
        """The colours ``category`` may take in this split."""
        return [c for c in PALETTE if not self.only_3d or is_in_3d_split(category, c)]


_3D_CATEGORIES = tuple(c for c in CATEGORIES if c not in HELD_OUT_CATEGORIES)
SPLITS: Dict[str, Split] = {
    s.name: s
    for s in (
        Split("chairs3d", 1, ("chair",), True, True, "chairs for 3D tuning (ShapeNet-Chair analogue)"),
        Split("objects3d", 2, _3D_CATEGORIES, True, True, "all 3D-allowed categories x colours (mini-Objaverse)"),
        Split("foundation2d", 3, tuple(CATEGORIES), False, False, "every category x colour, single views for the 2D model"),
        Split("eval3d", 4, _3D_CATEGORIES, True, True, "held-out objects for image-to-multiview evaluation"),
    )
}


def split_entry(name: str, index: int, seed: int = 0) -> Tuple[str, str, str, int]:
    """``(object_id, category, colour, object_seed)`` of object ``index`` of split ``name``, without building it.

    The object id ``{index:06d}-{category}-{colour}`` is a folder name; it is unique within one
    ``(name, seed)``.
    """
    if name not in SPLITS:
        raise ValueError(f"split name must be one of {sorted(SPLITS)}, got {name!r}")
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    split = SPLITS[name]
    rng = np.random.default_rng([split.code, seed, index])
    category = split.categories[rng.integers(len(split.categories))]
    colours = split.colours(category)
    colour = colours[rng.integers(len(colours))]
    object_seed = split.code * 2**_SEED_BITS + int(rng.integers(2**_SEED_BITS))
    return f"{index:06d}-{category}-{colour}", category, colour, object_seed


def split_object(name: str, index: int, seed: int = 0) -> Tuple[str, ProceduralObject]:
    """``(object_id, object)`` for object ``index`` of split ``name`` (see :func:`split_entry`)."""
    object_id, category, colour, object_seed = split_entry(name, index, seed)
    return object_id, generate_object(category, object_seed, colour)


def split_objects(name: str, num_objects: int, seed: int = 0) -> Iterator[Tuple[str, ProceduralObject]]:
    """Yield ``(object_id, object)`` for the first ``num_objects`` objects of split ``name``, deterministically."""
    if name not in SPLITS:
        raise ValueError(f"split name must be one of {sorted(SPLITS)}, got {name!r}")
    if num_objects < 0:
        raise ValueError(f"num_objects must be non-negative, got {num_objects}")
    return (split_object(name, index, seed) for index in range(num_objects))


@functools.lru_cache(maxsize=8)
def split_fingerprints(name: str, num_objects: int, seed: int = 0) -> FrozenSet[str]:
    """The fingerprints of the first ``num_objects`` objects of split ``name``: the contents a model
    trained on ``diffusers-mv3d render --split name --num-objects num_objects`` has seen (cached: 2000
    objects take about 1.5 s to build)."""
    return frozenset(obj.fingerprint() for _, obj in split_objects(name, num_objects, seed))


def unseen_split_objects(name: str, num_objects: int, seen: AbstractSet[str], seed: int = 0, start: int = 0,
                         max_scan: int = 100000) -> List[Tuple[str, ProceduralObject]]:
    """The first ``num_objects`` objects of split ``name`` from index ``start`` on, in index order, whose
    fingerprint is not in ``seen`` (e.g. :func:`split_fingerprints` of a training set): objects a model
    trained on that set has never seen, although other seeds may have drawn them.

    Raises:
        ValueError: when the ``max_scan`` objects from ``start`` hold fewer than ``num_objects`` unseen ones.
    """
    if num_objects < 0:
        raise ValueError(f"num_objects must be non-negative, got {num_objects}")
    found: List[Tuple[str, ProceduralObject]] = []
    for index in range(start, start + max_scan):
        if len(found) == num_objects:
            break
        object_id, obj = split_object(name, index, seed)
        if obj.fingerprint() not in seen:
            found.append((object_id, obj))
    if len(found) < num_objects:
        raise ValueError(f"the {max_scan} objects of split {name!r} from index {start} hold {len(found)} unseen ones, "
                         f"fewer than the {num_objects} asked for")
    return found


def tuning_objects(num_objects: int, first: int = 0, seen_objects3d: int = 2000) -> List[Tuple[str, ProceduralObject]]:
    """Objects to tune on (never the test set ``eval3d``): ``objects3d`` objects from index
    :data:`TUNING_START` on that none of the first ``seen_objects3d`` ``objects3d`` objects (the
    training renders) equals, skipping the first ``first`` of them. ``seen_objects3d=0`` takes them
    as they come."""
    if first < 0:
        raise ValueError(f"first must be non-negative, got {first}")
    seen = split_fingerprints("objects3d", seen_objects3d)
    return unseen_split_objects("objects3d", first + num_objects, seen, start=TUNING_START)[first:]

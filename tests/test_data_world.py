"""The procedural world: generators, captions, palette and splits."""
import re

import numpy as np
import pytest

from diffusers_mv3d.data import CATEGORIES, PALETTE, SPLITS, generate_object, is_in_3d_split, split_objects
from diffusers_mv3d.data.splits import (HELD_OUT_CATEGORIES, HELD_OUT_COLOURS, HELD_OUT_PAIRS, split_entry,
                                       split_fingerprints, split_object, tuning_objects,
                                       unseen_split_objects)


def test_palette_and_categories():
    assert len(PALETTE) >= 12 and len(CATEGORIES) >= 12 and CATEGORIES[0] == "chair"
    for name, rgb in PALETTE.items():
        assert len(rgb) == 3 and all(0.0 <= c <= 1.0 for c in rgb), name
    # colours are far apart: no two within 0.2 (Euclidean, RGB in 0..1)
    values = np.array(list(PALETTE.values()))
    distances = np.linalg.norm(values[:, None] - values[None], axis=-1) + np.eye(len(values))
    assert distances.min() > 0.2


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_is_deterministic_coloured_normalised_and_captioned(category):
    for seed in (0, 7, 2**50 + 3):
        a, b = generate_object(category, seed), generate_object(category, seed)
        assert np.array_equal(a.mesh.vertices, b.mesh.vertices) and np.array_equal(a.mesh.faces, b.mesh.faces)
        assert np.array_equal(a.mesh.visual.face_colors, b.mesh.visual.face_colors)
        assert a.caption == b.caption and a.attributes == b.attributes
        assert a.category == category and a.colour in PALETTE
        assert a.colour in a.caption.split() or f"{a.colour}." in a.caption, a.caption
        assert category in a.caption, a.caption
        assert not re.search(r"\ba [aeiou]", a.caption), a.caption
        radius = np.linalg.norm(a.mesh.vertices, axis=1).max()
        assert radius == pytest.approx(0.9, abs=1e-6)
        assert np.allclose(a.mesh.bounds.mean(axis=0), 0.0, atol=1e-6)
        assert a.mesh.visual.kind == "face"
        main = np.round(np.array(PALETTE[a.colour]) * 255)
        assert (np.abs(a.mesh.visual.face_colors[:, :3] - main).sum(axis=1) == 0).any()


def test_colour_argument_keeps_the_shape():
    red, blue = generate_object("chair", 11, "red"), generate_object("chair", 11, "blue")
    assert np.array_equal(red.mesh.vertices, blue.mesh.vertices)
    assert red.colour == "red" and "red" in red.caption and "blue" in blue.caption
    assert generate_object("chair", 12).attributes != red.attributes  # another seed, another chair


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="category"):
        generate_object("spaceship", 0)
    with pytest.raises(ValueError, match="colour"):
        generate_object("chair", 0, "mauve")
    with pytest.raises(ValueError, match="seed"):
        generate_object("chair", -1)


def test_chair_attributes_and_text2shape_like_captions():
    chairs = [generate_object("chair", s) for s in range(100)]
    templates = {
        "with back and arms": r"^an? \w+ chair with .* and (no )?armrests$",
        "on legs": r"^an? (low |tall )?\w+ chair on ",
        "comma list": r"^\w+ chair, \w+ seat, ",
        "two sentences": r"^this chair is \w+\. it has ",
        "seat first": r"^a chair with an? \w+ \w+ seat, ",
        "office": r"^an? (low |tall )?\w+ (office )?chair with (no back|an? .*back)$",
    }
    used = {name for name, pattern in templates.items() for c in chairs if re.match(pattern, c.caption)}
    assert len(used) >= 5, used
    for key, values in [("legs", {"four straight", "four cylindrical", "three", "swivel"}),
                        ("seat_shape", {"square", "rectangular", "round"}), ("armrests", {True, False}),
                        ("back_height", {"none", "low", "medium", "tall"}), ("back_style", {"solid", "slatted", "ladder"})]:
        assert {c.attributes[key] for c in chairs} >= values, key
    for c in chairs:  # the caption's claims follow the attributes
        if "three thin" in c.caption:
            assert c.attributes["legs"] == "three"
        if "swivel" in c.caption:
            assert c.attributes["legs"] == "swivel"
        if "no armrests" in c.caption:
            assert not c.attributes["armrests"]
        elif "armrests" in c.caption:
            assert c.attributes["armrests"]


def test_splits_respect_the_3d_combinations():
    assert set(SPLITS) == {"chairs3d", "objects3d", "foundation2d", "eval3d"}
    for name in ("chairs3d", "objects3d", "eval3d"):
        entries = [split_entry(name, i) for i in range(400)]
        assert all(is_in_3d_split(category, colour) for _, category, colour, _ in entries)
    assert {split_entry("chairs3d", i)[1] for i in range(100)} == {"chair"}
    objects3d = {split_entry("objects3d", i)[1] for i in range(400)}
    assert objects3d == set(CATEGORIES) - set(HELD_OUT_CATEGORIES)
    foundation = [split_entry("foundation2d", i)[1:3] for i in range(2000)]
    assert {c for c, _ in foundation} == set(CATEGORIES)
    assert {c for _, c in foundation} == set(PALETTE)
    creative = [pair for pair in foundation if not is_in_3d_split(*pair)]
    assert len(creative) > 100 and any(pair in HELD_OUT_PAIRS for pair in creative)
    assert not is_in_3d_split("chair", HELD_OUT_COLOURS[0]) and is_in_3d_split("chair", "red")


def test_eval_seeds_never_in_a_training_split():
    seeds = {name: {split_entry(name, i, seed)[3] for i in range(300) for seed in (0, 1)} for name in SPLITS}
    for train in ("chairs3d", "objects3d", "foundation2d"):
        assert not seeds["eval3d"] & seeds[train]
    assert len(seeds["eval3d"]) == 600


def test_fingerprints_tell_contents_apart_and_find_repeats_across_seeds():
    obj = generate_object("airplane", 3, "red")
    assert obj.fingerprint() == generate_object("airplane", 3, "red").fingerprint()
    assert obj.fingerprint() != generate_object("airplane", 3, "blue").fingerprint()  # same shape, other colour
    assert generate_object("chair", 1).fingerprint() != generate_object("chair", 2).fingerprint()
    # airplanes draw only wings x engines x trim colour: among 40 seeds some repeat exactly
    prints = [generate_object("airplane", seed, "red").fingerprint() for seed in range(40)]
    assert len(set(prints)) < len(prints)
    # and so do objects of different splits: eval3d holds objects equal to training ones
    seen = split_fingerprints("objects3d", 2000)
    eval_prints = [split_object("eval3d", i)[1].fingerprint() for i in range(40)]
    assert 0 < sum(p in seen for p in eval_prints) < 40


def test_unseen_split_objects_skips_what_a_training_set_holds():
    seen = split_fingerprints("objects3d", 2000)
    unseen = unseen_split_objects("eval3d", 5, seen)
    assert len(unseen) == 5 and not {obj.fingerprint() for _, obj in unseen} & seen
    indices = [int(object_id[:6]) for object_id, _ in unseen]
    assert indices == sorted(indices)
    skipped = [i for i in range(indices[-1]) if i not in indices]
    assert skipped and all(split_object("eval3d", i)[1].fingerprint() in seen for i in skipped)
    assert [i for i, _ in unseen_split_objects("eval3d", 3, frozenset())] == [i for i, _ in split_objects("eval3d", 3)]
    tuning = tuning_objects(3, first=1)
    assert [i for i, _ in tuning] == [i for i, _ in tuning_objects(4)][1:]
    assert all(int(i.split("-")[0]) >= 1_000_000 for i, _ in tuning) and not {o.fingerprint() for _, o in tuning} & seen
    everything = {obj.fingerprint() for _, obj in split_objects("eval3d", 30)}
    with pytest.raises(ValueError, match="hold .* unseen ones, fewer than the 40 asked for"):
        unseen_split_objects("eval3d", 40, everything, max_scan=30)


def test_split_objects_is_deterministic_and_prefix_stable():
    first = [(i, o.caption) for i, o in split_objects("objects3d", 3, seed=5)]
    again = [(i, o.caption) for i, o in split_objects("objects3d", 5, seed=5)][:3]
    assert first == again and len({i for i, _ in first}) == 3
    assert [i for i, _ in split_objects("objects3d", 3, seed=6)] != [i for i, _ in first]
    with pytest.raises(ValueError, match="split name"):
        split_objects("nope", 3)

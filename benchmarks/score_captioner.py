"""How much of an unseen object the auto-captions of image-to-multiview name (tuning objects).

Each object's view 0 is captioned as ``generate --image`` does without a prompt, and the caption's
source object is compared with the object: category, main colour, and the share of the object's
shape attributes (legs, back, size, parts: ``object.json``'s ``attributes``, same category only)
that the source object shares. Rows:

* ``retrieval captioner``: the caption of the nearest training object (built here from ``--data``,
  as ``diffusers-mv3d build-captioner`` does), recoloured to the attribute classifier's colour;
* ``attribute classifier``: "a <colour> <category>" (names no attribute: 0 by construction);
* ``ground truth``: the object's own caption (1 everywhere: the ceiling);
* ``negative control``: the caption of a random training object of the classifier's colour.

The objects are tuning objects (:func:`~diffusers_mv3d.data.splits.tuning_objects`: ``objects3d``
from index 1,000,000 on that none of the first ``--seen-objects3d`` objects, the training renders and
the captioner's index, equals; skipping ``--first``; never the test set ``eval3d``).

    python benchmarks/score_captioner.py --data data/objects3d --objects 200 --num-threads 1
"""

import argparse
import json
import os
from typing import Dict, List, Sequence

import numpy as np
import torch

from diffusers_mv3d.cameras import default_cameras
from diffusers_mv3d.captioning import build_captioner
from diffusers_mv3d.data.splits import tuning_objects
from diffusers_mv3d.evaluation.classifier import AttributeClassifier, classify
from diffusers_mv3d.evaluation.settings import DEFAULT_CLASSIFIER
from diffusers_mv3d.evaluation.variants import render_object


def agreement(obj, source: Dict) -> List[float]:
    """``[same category, same colour, share of the object's attributes the source shares]``."""
    same_category = obj.category == source["category"]
    shape_keys = [k for k in obj.attributes if not k.endswith("colour") and k in source.get("attributes", {})]
    shared = np.mean([obj.attributes[k] == source["attributes"][k] for k in shape_keys]) if shape_keys else 0.0
    return [float(same_category), float(obj.colour == source["colour"]), float(shared) if same_category else 0.0]


def read_objects(data_dir: str) -> List[Dict]:
    """``object.json`` of every object folder in ``data_dir``, in the captioner's (sorted) order."""
    folders = sorted(f for f in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, f)))
    objects = []
    for folder in folders:
        with open(os.path.join(data_dir, folder, "object.json"), encoding="utf-8") as f:
            objects.append(json.load(f))
    return objects


def row(name: str, scores: Sequence[List[float]]) -> str:
    category, colour, attributes = np.mean(scores, axis=0)
    return f"| {name} | {category:.3f} | {colour:.3f} | {attributes:.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="the training object folders (with object.json)")
    parser.add_argument("--objects", type=int, default=200, help="unseen objects3d objects")
    parser.add_argument("--first", type=int, default=16,
                        help="skip this many unseen objects (the first 16 are score_reconstructor.py's)")
    parser.add_argument("--seen-objects3d", type=int, default=2000,
                        help="skip objects equal to one of the first this many objects3d objects (--data's); 0: none")
    parser.add_argument("--num-threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seeds the negative control's draws")
    parser.add_argument("--key-size", type=int, default=16, help="the captioner's key side (build-captioner --key-size)")
    args = parser.parse_args()
    if args.objects < 1:
        parser.error(f"--objects must be >= 1, got {args.objects}")
    torch.set_num_threads(args.num_threads)

    captioner = build_captioner(args.data, key_size=args.key_size, progress=False)
    training = read_objects(args.data)
    if [o["caption"] for o in training] != captioner.config.captions:
        raise SystemExit(f"{args.data}: object.json captions differ from caption.txt; re-render the folder")
    classifier = AttributeClassifier.from_pretrained(DEFAULT_CLASSIFIER)
    cameras = default_cameras(8, 32)
    picked = tuning_objects(args.objects, args.first, args.seen_objects3d)
    objects = [obj for _, obj in picked]
    images = torch.stack([render_object(obj, cameras)[0] for obj in objects]) * 2 - 1  # view 0 on white
    category_logits, colour_logits = classify(classifier, images)
    categories = [classifier.config.categories[i] for i in category_logits.argmax(-1).tolist()]
    colours = [classifier.config.colours[i] for i in colour_logits.argmax(-1).tolist()]

    nearest = captioner.nearest(images).tolist()
    retrieval = [agreement(obj, {**training[j], "colour": colour}) for obj, j, colour in zip(objects, nearest, colours)]
    classifier_rows = [agreement(obj, {"category": c, "colour": k}) for obj, c, k in zip(objects, categories, colours)]
    truth = [agreement(obj, {"category": obj.category, "colour": obj.colour, "attributes": obj.attributes})
             for obj in objects]
    rng = np.random.default_rng(args.seed)
    control = []
    for obj, colour in zip(objects, colours):
        pool = [o for o in training if o["colour"] == colour] or training
        control.append(agreement(obj, pool[int(rng.integers(len(pool)))]))

    print(f"{args.objects} tuning objects ({picked[0][0]} to {picked[-1][0]}, none equal to the first "
          f"{args.seen_objects3d} objects3d objects), view 0 at 32 px; "
          f"captioner of the {len(training)} objects in {args.data}\n")
    print("| auto-caption | category | colour | shape attributes shared |\n|---|---|---|---|")
    print(row("retrieval captioner (pipeline default)", retrieval))
    print(row("attribute classifier", classifier_rows))
    print(row("ground truth (the object's caption)", truth))
    print(row("negative control (a random training object of the same colour)", control))


if __name__ == "__main__":
    main()

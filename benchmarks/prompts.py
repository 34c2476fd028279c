"""The fixed prompt set of the quality benchmark (DESIGN.md §6; ``benchmarks/bench_quality.py``,
``diffusers-mv3d evaluate``).

Each prompt carries the (category, colour) labels the attribute classifier scores it against.
``IN_SPLIT`` prompts are combinations the 3D tuning data holds (``objects3d``; two chairs, the
ShapeNet-Chair analogue); ``OUT_OF_SPLIT`` prompts are combinations only the 2D foundation data holds
(``data.splits.is_in_3d_split`` is False), one for each way a combination is kept out of 3D data:
a held-out category (snowman, rocket), a held-out colour (pink) and a held-out pair (a green chair).
Their figures measure how much of the foundation model's creativity the method keeps. The wording
follows the procedural world's captions, so every word is in the foundation's vocabulary.

Changing a prompt or a seed changes every figure computed with it: add a new set instead.
"""

from diffusers_mv3d.data.splits import is_in_3d_split
from diffusers_mv3d.evaluation.evaluate import EvalPrompt

IN_SPLIT = [
    EvalPrompt("a red chair with armrests", "chair", "red"),
    EvalPrompt("a tall blue chair on four legs", "chair", "blue"),
    EvalPrompt("a brown table with four legs", "table", "brown"),
    EvalPrompt("an orange mug with a handle", "mug", "orange"),
    EvalPrompt("a red car with four black wheels", "car", "red"),
    EvalPrompt("a green tree with a brown trunk", "tree", "green"),
    EvalPrompt("a grey airplane with swept wings", "airplane", "grey"),
    EvalPrompt("a long cyan sofa with a low back", "sofa", "cyan"),
]

OUT_OF_SPLIT = [
    EvalPrompt("a white snowman with a carrot nose", "snowman", "white"),  # held-out category
    EvalPrompt("a red rocket with a round window", "rocket", "red"),  # held-out category
    EvalPrompt("a pink mug with a handle", "mug", "pink"),  # held-out colour
    EvalPrompt("a green chair with armrests", "chair", "green"),  # held-out (category, colour) pair
]

PROMPTS = IN_SPLIT + OUT_OF_SPLIT
SEEDS = (0, 1)

assert all(is_in_3d_split(p.category, p.colour) for p in IN_SPLIT), "an IN_SPLIT prompt is not in any 3D split"
assert not any(is_in_3d_split(p.category, p.colour) for p in OUT_OF_SPLIT), "an OUT_OF_SPLIT prompt is in a 3D split"

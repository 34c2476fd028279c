"""The tuning prompt set: where sampling settings (guidance scale, steps, ...) are chosen.

``benchmarks/prompts.py`` is the test set: its figures are reported, never tuned on. A setting is
chosen here first, on other objects and other wording, then measured once on the test set:

    diffusers-mv3d evaluate --prompts benchmarks/tuning_prompts.py --guidance-scale 1.5 ...

Same structure as the test set (labels for the attribute classifier; ``IN_SPLIT`` combinations the 3D
tuning data holds, ``OUT_OF_SPLIT`` ones only the 2D foundation data holds), no prompt in common with it.
"""

from diffusers_mv3d.data.splits import is_in_3d_split
from diffusers_mv3d.evaluation.evaluate import EvalPrompt

IN_SPLIT = [
    EvalPrompt("a black chair with a slatted back", "chair", "black"),
    EvalPrompt("a white table with a round top", "table", "white"),
    EvalPrompt("a grey sofa with three seats", "sofa", "grey"),
    EvalPrompt("a tall floor lamp in red", "lamp", "red"),
    EvalPrompt("a green bottle with a white label", "bottle", "green"),
    EvalPrompt("a blue car with four black wheels", "car", "blue"),
    EvalPrompt("a brown house with a red roof", "house", "brown"),
    EvalPrompt("a purple bed with a pillow", "bed", "purple"),
]

OUT_OF_SPLIT = [
    EvalPrompt("a green snowman with a black hat", "snowman", "green"),  # held-out category
    EvalPrompt("a white rocket with three fins", "rocket", "white"),  # held-out category
    EvalPrompt("a teal bench with a back", "bench", "teal"),  # held-out colour
    EvalPrompt("a yellow car with four black wheels", "car", "yellow"),  # held-out (category, colour) pair
]

PROMPTS = IN_SPLIT + OUT_OF_SPLIT
SEEDS = (0, 1)

assert all(is_in_3d_split(p.category, p.colour) for p in IN_SPLIT), "an IN_SPLIT prompt is not in any 3D split"
assert not any(is_in_3d_split(p.category, p.colour) for p in OUT_OF_SPLIT), "an OUT_OF_SPLIT prompt is in a 3D split"

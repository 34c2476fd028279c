"""The settings of ``diffusers-mv3d evaluate`` (:mod:`.evaluate`): the variant names, the prompt set and
:class:`EvaluationConfig`.
"""

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..data.splits import is_in_3d_split

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROMPTS = REPO_ROOT / "benchmarks" / "prompts.py"
DEFAULT_CLASSIFIER = Path(__file__).resolve().parent / "attribute_classifier"

VARIANTS: Dict[str, str] = {
    "foundation": "frozen UNet alone, views sampled independently (same DDIM loop, CFG, noise)",
    "tunemv3d": "the pipeline as saved",
    "k0": "consistency ratio K = 0",
    "k0.25": "consistency ratio K = 0.25",
    "k0.5": "consistency ratio K = 0.5",
    "k1": "consistency ratio K = 1",
    "alpha3": "consistency scale alpha = 3",
    "alpha15": "consistency scale alpha = 15",
    "no-attention": "branch without GeometryAwareAttention",
    "no-neus": "branch without the NeuS condition and samples, K = 0",
    "full-cost": "the paper's sampling at full cost: branch on both CFG halves, NeuS every step",
    "neus1": "NeuS condition rendered every step (branch shared by the CFG halves)",
    "neus3": "NeuS condition rendered every 3 steps (branch shared by the CFG halves; the pipeline's default since 2026-12-02)",
    "shared-noise": "the views of an object share their initial noise's mean (shared_noise_tiles=1)",
    "finetune": "baseline: the foundation's UNet fully fine-tuned on the multi-view data, views independent (--finetune-model)",
    "mvdream": "baseline: MVDream-style fine-tune, self-attention over the views + camera embedding (--mvdream-model)",
    "ground-truth": "renders of held-out eval3d objects with the prompts' attributes",
    "negative-control": "views alternating between two different ground-truth objects",
}
REFERENCE_VARIANTS = ("ground-truth", "negative-control")
BASELINE_VARIANTS: Dict[str, str] = {"finetune": "finetune_model", "mvdream": "mvdream_model"}
"""The trained baselines (``diffusers-mv3d train-baseline``) and the setting naming each one's model folder."""
SAMPLING_VARIANTS = ("full-cost", "neus1", "neus3", "shared-noise")
"""The sampling-cost levers of issue 14 (docs/results.md compares them); not run by default."""
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in BASELINE_VARIANTS and v not in SAMPLING_VARIANTS)
"""What runs unless ``--variants`` says otherwise: every variant but the baselines, which need their folders,
and the sampling levers."""


# ---------------------------------------------------------------------------------------------
# The prompt set
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalPrompt:
    """One prompt of the evaluation set with the attributes it asks for.

    Args:
        text: the caption given to the pipeline.
        category: a :data:`~diffusers_mv3d.data.world.CATEGORIES` name (the classifier's label).
        colour: a :data:`~diffusers_mv3d.data.palette.PALETTE` name (the classifier's label).
    """

    text: str
    category: str
    colour: str

    def __post_init__(self):
        is_in_3d_split(self.category, self.colour)  # raises ValueError on unknown names

    @property
    def in_split(self) -> bool:
        """Whether some 3D tuning split holds this (category, colour); False: foundation2d only."""
        return is_in_3d_split(self.category, self.colour)

    @property
    def attributes(self) -> Dict[str, str]:
        return {"category": self.category, "colour": self.colour}


def load_prompt_set(path: Optional[str] = None) -> Tuple[List[EvalPrompt], Tuple[int, ...]]:
    """``(prompts, seeds)`` from a ``.py`` file (``PROMPTS``, optional ``SEEDS``) or a ``.json`` file
    (a list of ``{"text", "category", "colour"}``, or ``{"prompts": [...], "seeds": [...]}``).

    The default is the repository's ``benchmarks/prompts.py``. Seeds default to ``(0,)`` when the file
    gives none.
    """
    path = str(path or DEFAULT_PROMPTS)
    if not os.path.isfile(path):
        raise ValueError(f"--prompts {path!r}: no such file (the default lives in the repository's benchmarks/)")
    seeds: Sequence[int] = (0,)
    if path.endswith(".py"):
        spec = importlib.util.spec_from_file_location("_mv3d_eval_prompts", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        entries, seeds = getattr(module, "PROMPTS", None), getattr(module, "SEEDS", seeds)
        if entries is None:
            raise ValueError(f"--prompts {path!r} defines no PROMPTS")
    elif path.endswith(".json"):
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        entries = data.get("prompts") if isinstance(data, dict) else data
        seeds = data.get("seeds", seeds) if isinstance(data, dict) else seeds
    else:
        raise ValueError(f"--prompts expects a .py or .json file, got {path!r}")
    prompts = []
    for entry in entries or ():
        if isinstance(entry, EvalPrompt):
            prompts.append(entry)
        elif isinstance(entry, dict):
            prompts.append(EvalPrompt(entry["text"], entry["category"], entry["colour"]))
        else:
            prompts.append(EvalPrompt(*entry))
    if not prompts:
        raise ValueError(f"--prompts {path!r} holds no prompts")
    return prompts, tuple(int(s) for s in seeds)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
@dataclass
class EvaluationConfig:
    """Settings of one evaluation (the flags of ``diffusers-mv3d evaluate`` and ``bench_quality.py``)."""

    model: str = ""
    """TuneMV3D pipeline folder or Hub id; a text-to-image folder without controlnet/ gets a fresh branch (smoke runs)."""
    foundation: Optional[str] = None
    """Text-to-image folder whose UNet samples the foundation variant (default: the model's own frozen UNet)."""
    finetune_model: Optional[str] = None
    """Model folder of `diffusers-mv3d train-baseline --kind finetune` (e.g. runs/baseline-finetune-tiny/model): the finetune variant."""
    mvdream_model: Optional[str] = None
    """Model folder of `diffusers-mv3d train-baseline --kind mvdream` (e.g. runs/baseline-mvdream-tiny/model): the mvdream variant."""
    classifier: Optional[str] = None
    """AttributeClassifier folder for fidelity (default: the package's evaluation/attribute_classifier/)."""
    fidelity: bool = True
    """Score fidelity (skipped with a warning when the classifier is missing)."""
    prompts: Optional[str] = None
    """Prompt-set file, .py (PROMPTS, SEEDS) or .json (default: benchmarks/prompts.py)."""
    variants: Tuple[str, ...] = DEFAULT_VARIANTS
    """Variants to run: foundation tunemv3d k0 k0.25 k0.5 k1 alpha3 alpha15 no-attention no-neus ground-truth negative-control, the baselines finetune and mvdream (with --finetune-model / --mvdream-model), and the sampling options full-cost neus1 neus3 shared-noise (not by default)."""
    views: int = 8
    """Views an object (default orbit: elevation 20, azimuth every 360/views degrees)."""
    steps: int = 50
    """DDIM steps."""
    guidance_scale: Optional[float] = None
    """Classifier-free guidance on the text, the same for every variant (none: the pipeline's default, its scheduler config)."""
    seeds: Tuple[int, ...] = ()
    """Sampling seeds, the same for every variant (empty: the prompt set's SEEDS)."""
    held_out: Tuple[int, ...] = (1, 5)
    """Views the reconstruction PSNR holds out (taken modulo views)."""
    mask_threshold: float = 0.05
    """Foreground when a channel differs from the background colour by more than this (foreground_masks)."""
    fidelity_on_white: bool = True
    """Classify views with their background (outside the foreground masks) made white, as the classifier's training renders (generated backgrounds are often tinted)."""
    mask_background: str = "border"
    """The background colour of foreground_masks: border (each view's border median; generated backgrounds are often tinted) or white."""
    hull_resolution: int = 64
    """Voxels a side for the visual-hull IoU and photo-consistency."""
    recon_steps: int = 200
    """Fitting steps of the reconstruction PSNR's voxel field (DESIGN.md figures use 400)."""
    recon_resolution: int = 32
    """Voxels a side of the reconstruction PSNR's field."""
    image_to_multiview: int = 0
    """Also run image-to-multiview on this many held-out eval3d objects (0: skip)."""
    seen_objects3d: int = 2000
    """Image-to-multiview takes only eval3d objects that none of the first this many objects3d objects equals (the model's 3D training renders; the embedded default's are `render --split objects3d --num-objects 2000`): the world repeats objects across seeds. 0: the first eval3d objects as they come."""
    image_to_multiview_caption: bool = False
    """Give the object's caption with the reference image (default: the image alone)."""
    image_to_multiview_auto_caption: bool = False
    """Give the reference image's auto-caption, what `generate --image` gives without a prompt (the pipeline's captioner in the attribute classifier's colour; without a captioner the classifier's "a <colour> <category>")."""
    mesh_resolution: int = 64
    """Marching-cubes grid of the image-to-multiview meshes."""
    mesh_iou_resolution: int = 32
    """Voxels a side of [-1, 1]^3 for the volume IoU."""
    chamfer_points: int = 10000
    """Surface samples a mesh for the Chamfer-L1 distance."""
    device: str = "auto"
    """Device of the pipeline: auto (cuda when available), cpu, cuda, ... (metrics run on the CPU)."""
    num_threads: int = 0
    """torch.set_num_threads for the run; 0 keeps torch's default (on a busy machine 1 can be several times faster)."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required: a TuneMV3D pipeline folder (or a text-to-image folder)")
        if self.mask_background not in ("border", "white"):
            raise ValueError(f"--mask-background must be border or white, got {self.mask_background!r}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"--variants must name some of {list(VARIANTS)}, got {list(self.variants)}")
        for variant, field in BASELINE_VARIANTS.items():
            if variant in self.variants and not getattr(self, field):
                raise ValueError(f"--variants {variant} needs --{field.replace('_', '-')} DIR (the model/ folder of "
                                 f"`diffusers-mv3d train-baseline --kind {variant}`)")
        if self.views < 2:
            raise ValueError(f"--views must be >= 2 (the reconstruction PSNR holds some out), got {self.views}")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if len({h % self.views for h in self.held_out}) >= self.views or not self.held_out:
            raise ValueError(f"--held-out {list(self.held_out)} must name some but not all of the {self.views} views")
        if self.num_threads < 0:
            raise ValueError(f"--num-threads must be >= 0 (0: torch's default), got {self.num_threads}")
        if self.image_to_multiview < 0:
            raise ValueError(f"--image-to-multiview must be >= 0, got {self.image_to_multiview}")
        if self.seen_objects3d < 0:
            raise ValueError(f"--seen-objects3d must be >= 0 (0: no check), got {self.seen_objects3d}")
        if self.image_to_multiview_caption and self.image_to_multiview_auto_caption:
            raise ValueError("--image-to-multiview-caption and --image-to-multiview-auto-caption exclude each other "
                             "(the object's caption, or the one made from its image)")
        if any(seed < 0 for seed in self.seeds):
            raise ValueError(f"--seeds must be >= 0, got {list(self.seeds)}")
        for name in ("hull_resolution", "recon_resolution", "mesh_resolution", "mesh_iou_resolution", "chamfer_points"):
            if getattr(self, name) < 2:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 2, got {getattr(self, name)}")

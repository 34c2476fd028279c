"""An exponential moving average of a module's weights (diffusers' ``EMAModel`` with warm-up), kept in
checkpoints as ``ema.safetensors`` keyed by parameter name plus the average's step and decay in the
trainer state."""

import contextlib
import json
from pathlib import Path
from typing import Dict, Iterator

import torch

from .checkpointing import STATE_FILE

__all__ = ["WeightAverage"]


class WeightAverage:
    """EMA of every parameter of ``module``: decay ``min(decay, 1 - (1 + step) ** -power)``."""

    def __init__(self, module: torch.nn.Module, decay: float, power: float):
        from diffusers.training_utils import EMAModel

        self.names = [name for name, _ in module.named_parameters()]
        self.params = list(module.parameters())
        self.ema = EMAModel(self.params, decay=decay, use_ema_warmup=True, inv_gamma=1.0, power=power)

    def step(self) -> None:
        """Fold the current weights into the average (after an optimizer step)."""
        self.ema.step(self.params)

    def to(self, device: torch.device) -> "WeightAverage":
        self.ema.to(device)
        return self

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The module holds the averaged weights inside the block, its own afterwards."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def write(self, folder: Path) -> Dict[str, object]:
        """Write ``ema.safetensors`` into a checkpoint folder; returns the trainer-state entry."""
        from safetensors.torch import save_file

        state = self.ema.state_dict()
        shadow = state.pop("shadow_params")
        save_file({name: s.detach().cpu().contiguous() for name, s in zip(self.names, shadow)}, str(folder / "ema.safetensors"))
        return {"ema": state}

    def load(self, folder: Path) -> None:
        """Restore what :meth:`write` wrote into ``folder`` (and its trainer state)."""
        from safetensors.torch import load_file

        state = json.loads((folder / STATE_FILE).read_text())
        shadow = load_file(str(folder / "ema.safetensors"))
        self.ema.load_state_dict({**state["ema"], "shadow_params": [shadow[name] for name in self.names]})

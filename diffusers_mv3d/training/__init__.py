"""Trainers (accelerate): the foundation text-to-image model and the TuneMV3D branch.

Settings are one dataclass a trainer; :mod:`.config` turns it into command-line flags and reads
``--config`` files. :mod:`.checkpointing` writes and finds the checkpoints (atomic folders,
safetensors + JSON) and :mod:`.common` holds the plumbing the trainers share (the step-seeded batch
stream, accelerator, LR schedule, sample grids, the sub-command wiring).
"""

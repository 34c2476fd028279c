"""Trainers (accelerate): the foundation text-to-image model and the TuneMV3D branch.

Settings are one dataclass a trainer; :mod:`.config` turns it into command-line flags and reads
``--config`` files.
"""

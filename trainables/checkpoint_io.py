"""Reading augtune checkpoints safely: weights-only, with the format tag checked. A leaf module
(torch only), so the config schema can check a checkpoint at load time without the engine."""
from __future__ import annotations

from pathlib import Path

import torch


class CheckpointError(ValueError):
    pass


def read_checkpoint(path: Path, lazy: bool = False) -> dict:
    """The payload of a checkpoint written by `save_checkpoint`, read weights-only (a pickle
    that would run code is refused, never executed). `lazy`: the tensors are memory-mapped, not
    read, for a look at the checkpoint's facts."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    except Exception as exc:  # unpickling errors come in many types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read as a weights-only torch file ({first_line})") \
            from None
    if not isinstance(payload, dict) or payload.get("format") != "augtune-model-1":
        raise CheckpointError(f"checkpoint {path} was not written by augtune (no 'augtune-model-1' format tag)")
    return payload

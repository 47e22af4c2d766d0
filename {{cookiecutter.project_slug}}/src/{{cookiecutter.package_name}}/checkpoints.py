"""Training checkpoints: written atomically by rank 0 every N steps, restored on start so a killed run resumes.

One file, `<dir>/checkpoint.pt`, always the latest. It is written to a temporary file in the same directory and
renamed over the old one (`os.replace`), so a kill at any moment leaves either the previous complete checkpoint or
the new complete one, never a partial file. A checkpoint records what it belongs to (its *fingerprint*: backend,
world size, hyper-parameters, model spec, a digest of the training data). A checkpoint with a different fingerprint
is ignored with a warning naming the differences, and training starts from step 0 (and overwrites it at its first
checkpoint): changing the config is a new training run, not a continuation.

The checkpoint directory must not be a declared Snakemake output: Snakemake deletes the declared outputs of a
failed job, which would delete the checkpoint exactly when it is needed. The pipeline uses
`results/checkpoints/train_model/`; a run that finishes removes its checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

FILE_NAME = "checkpoint.pt"
FORMAT = 1


def data_digest(features: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in (features, labels):
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def fingerprint(backend: str, world_size: int, params: dict, spec: dict, data: str) -> dict:
    """What a checkpoint must match to be resumed."""
    return {"backend": backend, "world_size": world_size, "params": params, "spec": spec, "data_sha256": data}


def differences(found: dict, expected: dict, prefix: str = "") -> list[str]:
    """`key: found -> expected` for every key whose value differs (nested dicts flattened with dots)."""
    out = []
    for key in sorted(set(found) | set(expected), key=str):
        a, b = found.get(key, "<missing>"), expected.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():  # dropout on a GPU draws from the GPUs' generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save(directory: str | Path, state: dict) -> Path:
    """Write `state` as the directory's checkpoint, atomically (temporary file, fsync, rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / FILE_NAME
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{FILE_NAME}.", suffix=".tmp", delete=False)
    try:
        with handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, final)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return final


def load(directory: str | Path, expected: dict) -> tuple[dict | None, str | None]:
    """(state, None) for a matching checkpoint; (None, warning) for an unusable one; (None, None) if there is none."""
    path = Path(directory) / FILE_NAME
    if not path.is_file():
        return None, None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported, not fatal
        return None, f"ignoring unreadable checkpoint {path} ({type(error).__name__}: {error}); starting from step 0"
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return None, f"ignoring checkpoint {path}: unknown format {state.get('format') if isinstance(state, dict) else '?'}"
    changed = differences(state.get("fingerprint", {}), expected)
    if changed:
        return None, (
            f"ignoring checkpoint {path} (step {state.get('step')}): it belongs to a different training run "
            f"({'; '.join(changed)}); starting from step 0, the checkpoint will be overwritten"
        )
    return state, None


def clear(directory: str | Path) -> None:
    """Remove the checkpoint and any temporary file a killed writer left behind."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in [directory / FILE_NAME, *directory.glob(f".{FILE_NAME}.*.tmp")]:
        path.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass

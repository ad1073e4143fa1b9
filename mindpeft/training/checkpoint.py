"""The ``Trainer``'s checkpoint folders: ``checkpoint-<step>`` discovery, checksums, random-number states, AdaLoRA's
allocator state, and removal that never leaves a half-deleted folder in view."""
import hashlib
import os
import random
import re
import uuid

import numpy as np
import mindspore as ms

from ..utils.io import pid_alive, remove_path, remove_stale_temporaries_in

CHECKPOINT_PREFIX = "checkpoint"
CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
TRASH_PREFIX = ".trash-"


class CheckpointError(Exception):
    """A checkpoint folder that is incomplete, damaged or made by another run."""


def file_info(path):
    """``{"size": bytes, "sha256": hex digest}`` of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}


def folder_checksums(folder, skip=()):
    """:func:`file_info` of every plain file in ``folder`` except the names in ``skip``."""
    return {name: file_info(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if name not in skip and os.path.isfile(os.path.join(folder, name))}


def verify_checksums(folder, recorded, source):
    """Raise :class:`CheckpointError` unless every file in ``recorded`` (``{name: file_info}``, read from the file
    ``source``) is in ``folder`` with its recorded size and checksum."""
    for name, info in recorded.items():
        if not isinstance(info, dict) or os.path.basename(name) != name:
            raise CheckpointError(f"{source} lists {name!r} oddly: {info!r}")
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{name} is missing")
        actual = file_info(path)
        if actual["size"] != info.get("size"):
            raise CheckpointError(f"{name} is {actual['size']} bytes, but {source} recorded {info.get('size')}")
        if actual["sha256"] != info.get("sha256"):
            raise CheckpointError(f"{name} does not match the checksum in {source}")


def rng_state():
    """Python's, numpy's and MindSpore's global random-number states, as JSON-ready lists."""
    version, python_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(python_state), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "mindspore": ms.get_rng_state().asnumpy().tolist()}


def set_rng_state(state):
    """Restore what :func:`rng_state` returned."""
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    ms.set_rng_state(ms.Tensor(np.array(state["mindspore"], dtype=np.uint8)))


def adalora_arrays(model):
    """AdaLoRA's rank-allocator importance scores, ``{"<kind>/<parameter name>": array}`` for ``np.savez``."""
    allocator = model.base_model.rankallocator
    arrays = {}
    for prefix, values in (("ipt", allocator.ipt), ("avg_ipt", allocator.exp_avg_ipt),
                           ("avg_unc", allocator.exp_avg_unc)):
        for name, value in values.items():
            arrays[f"{prefix}/{name}"] = value
    return arrays


def restore_adalora(model, path, rank_pattern):
    """Load :func:`adalora_arrays` from the ``.npz`` at ``path`` and the config's ``rank_pattern``."""
    allocator = model.base_model.rankallocator
    allocator.reset_ipt()
    targets = {"ipt": allocator.ipt, "avg_ipt": allocator.exp_avg_ipt, "avg_unc": allocator.exp_avg_unc}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            prefix, name = key.split("/", 1)
            targets[prefix][name] = data[key]
    model.peft_config[model.active_adapter].rank_pattern = rank_pattern


def list_checkpoints(output_dir):
    """(global step, path) of the complete ``checkpoint-<step>`` folders in ``output_dir``, newest first.
    Temporary folders are named differently, so they never show up here."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for entry in os.listdir(output_dir):
        match = CHECKPOINT_RE.match(entry)
        if match and os.path.isdir(os.path.join(output_dir, entry)):
            found.append((int(match.group(1)), os.path.join(output_dir, entry)))
    return sorted(found, reverse=True)


def discard(path):
    """Remove a folder so that it never shows half deleted: renamed away first, then deleted."""
    parent, name = os.path.split(path)
    trash = os.path.join(parent, f"{TRASH_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}")
    os.rename(path, trash)
    remove_path(trash)


def remove_stale(output_dir):
    """Delete what killed runs left behind: temporary checkpoint/adapter folders and files, half-deleted folders."""
    remove_stale_temporaries_in(output_dir)
    for entry in os.listdir(output_dir):
        if entry.startswith(TRASH_PREFIX):
            pid = entry[len(TRASH_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                remove_path(os.path.join(output_dir, entry))


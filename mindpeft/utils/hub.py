"""Hub names resolved offline: a model, tokenizer or adapter id found in the local Hugging Face cache.

``from_pretrained("bigscience/mt0-large")`` works without a network when the files were downloaded once (by
``huggingface-cli download``, transformers or HF peft): the id resolves to its snapshot folder in the cache that
``HF_HUB_CACHE`` / ``HF_HOME`` name (default ``~/.cache/huggingface/hub``). Nothing is ever downloaded.
"""
import os


def resolve_folder(name_or_path, revision=None, subfolder=None):
    """The local folder for ``name_or_path``: itself when it is a folder, else the cached snapshot of that hub id.

    Raises ``FileNotFoundError`` saying where it looked when it is neither.
    """
    name_or_path = os.fspath(name_or_path)
    if os.path.isdir(name_or_path):
        folder = name_or_path
    else:
        folder = _cached_snapshot(name_or_path, revision)
    if subfolder:
        folder = os.path.join(folder, subfolder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{name_or_path!r} has no sub-folder {subfolder!r} ({folder})")
    return folder


def _looks_like_hub_id(name):
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def _cached_snapshot(name, revision):
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache = constants.HF_HUB_CACHE
    where = (f"{name!r} is not a local folder (looked at {os.path.abspath(name)})")
    if not _looks_like_hub_id(name):
        raise FileNotFoundError(f"{where}, and is not a hub id either")
    try:
        return snapshot_download(name, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError) as err:
        raise FileNotFoundError(
            f"{where}, nor in the local Hugging Face cache ({cache}, set by HF_HUB_CACHE or HF_HOME): {err}. "
            f"mindpeft never downloads; fetch it once with `huggingface-cli download {name}` or pass a local "
            f"folder.") from None

"""Hub names resolved offline: a model, tokenizer or adapter id found in the local Hugging Face cache.

``from_pretrained("bigscience/mt0-large")`` works without a network when the files were downloaded once (by
``huggingface-cli download``, transformers or HF peft): the id resolves to its snapshot folder in the cache that
``HF_HUB_CACHE`` / ``HF_HOME`` name (default ``~/.cache/huggingface/hub``). Nothing is ever downloaded.
"""
import os


class NotFoundLocallyError(FileNotFoundError, ValueError):
    """A name that is neither a local folder nor a cached hub id (a ``FileNotFoundError`` as transformers raises,
    and a ``ValueError`` as HF peft raises for adapters)."""


def resolve_folder(name_or_path, revision=None, subfolder=None):
    """The local folder for ``name_or_path``: itself when it is a folder, else the cached snapshot of that hub id.

    Raises :class:`NotFoundLocallyError` saying where it looked when it is neither.
    """
    name_or_path = os.fspath(name_or_path)
    if os.path.isdir(name_or_path):
        folder = name_or_path
    else:
        folder = _cached_snapshot(name_or_path, revision)
    if subfolder:
        folder = os.path.join(folder, subfolder)
        if not os.path.isdir(folder):
            raise NotFoundLocallyError(f"{name_or_path!r} has no sub-folder {subfolder!r} ({folder})")
    return folder


def recorded_name(name_or_path, folder):
    """The name a model or tokenizer loaded from ``name_or_path`` (found in ``folder``) keeps as its
    ``name_or_path``: a hub id stays the hub id, as in transformers, so that adapters trained on it name their base
    model as HF peft does and load on other machines; a local folder becomes its absolute path."""
    name_or_path = os.fspath(name_or_path)
    return os.path.abspath(folder) if os.path.isdir(name_or_path) else name_or_path


def _looks_like_hub_id(name):
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def _cached_snapshot(name, revision):
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache = constants.HF_HUB_CACHE
    where = f"{name!r} does not exist as a local folder ({os.path.abspath(name)})"
    if not _looks_like_hub_id(name):
        raise NotFoundLocallyError(f"{where} (mindpeft loads from local folders or the local Hugging Face cache)")
    try:
        return snapshot_download(name, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError) as err:
        raise NotFoundLocallyError(
            f"{where}, nor in the local Hugging Face cache ({cache}, set by HF_HUB_CACHE or HF_HOME): {err}. "
            f"mindpeft never downloads; fetch it once with `huggingface-cli download {name}` or pass a local "
            f"folder.") from None

"""Image pre-processing of ViT and SegFormer without torch: numpy, and Pillow for resizing.

The steps and their arithmetic are those of transformers' PIL backend (``ViTImageProcessorPil``,
``SegformerImageProcessorPil``, what ``AutoImageProcessor`` gives without torchvision): images go channels-first,
are resized by Pillow (uint8; float images in [0, 1] are scaled to 0..255 for it and back), rescaled in float64 to
float32, then normalised. Settings come from ``preprocessor_config.json``.
"""
import os

import numpy as np

from ..utils.hub import resolve_folder
from ..utils.io import read_json_object, write_json
from .tokenization import BatchEncoding

PROCESSOR_NAME = "preprocessor_config.json"
PILLOW_REQUIREMENT = "Pillow==13.0.0"
IMAGENET_STANDARD_MEAN = [0.5, 0.5, 0.5]
IMAGENET_STANDARD_STD = [0.5, 0.5, 0.5]
IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]
NEAREST, BILINEAR = 0, 2  # PIL.Image.Resampling values, as preprocessor_config.json stores them


class BatchFeature(BatchEncoding):
    """A processor's output: a dict (``pixel_values``, ``labels``, ``input_features``...) whose values are also
    attributes; ``return_tensors="np"`` stacks them as numpy arrays, ``"ms"`` as ``mindspore.Tensor``."""


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"Resizing images needs Pillow: pip install 'mindpeft[vision]' ({PILLOW_REQUIREMENT})") \
            from None
    return Image


class ProcessorConfigMixin:
    """``from_pretrained``/``save_pretrained``/``to_dict`` over ``preprocessor_config.json`` for processors whose
    settings are the keys of ``defaults``."""

    defaults = {}
    type_key = "image_processor_type"
    # keys transformers writes that carry no behaviour here
    ignored_keys = {"image_processor_type", "feature_extractor_type", "processor_class", "_processor_class",
                    "processor_type", "transformers_version", "auto_map"}
    renamed_keys = {}

    def __init__(self, **kwargs):
        for old, new in self.renamed_keys.items():
            if old in kwargs:
                kwargs.setdefault(new, kwargs.pop(old))
        unknown = {k: v for k, v in kwargs.items()
                   if k not in self.defaults and k not in self.ignored_keys and v not in (None, False)}
        if unknown:
            raise ValueError(f"{type(self).__name__} does not support the option(s) {unknown}")
        for key, default in self.defaults.items():
            value = kwargs.get(key)
            setattr(self, key, list(default) if isinstance(default, list) and value is None
                    else (default if value is None else value))

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Read ``preprocessor_config.json`` from a folder (or a hub id in the local HF cache); ``kwargs``
        override its values."""
        file = _config_file(path, kwargs.pop("revision", None), kwargs.pop("subfolder", None))
        try:
            return cls(**{**read_json_object(file), **kwargs})
        except ValueError as err:
            raise ValueError(f"{file}: {err}") from None

    def to_dict(self):
        out = {key: getattr(self, key) for key in self.defaults if getattr(self, key) is not None}
        out[self.type_key] = type(self).__name__
        return out

    def save_pretrained(self, save_directory):
        """Write ``preprocessor_config.json`` into ``save_directory`` (created if needed; other files stay)."""
        os.makedirs(save_directory, exist_ok=True)
        write_json(os.path.join(save_directory, PROCESSOR_NAME), self.to_dict())

    def __repr__(self):
        return f"{type(self).__name__} {self.to_dict()}"


def _config_file(path, revision=None, subfolder=None):
    folder = resolve_folder(path, revision, subfolder)
    file = os.path.join(folder, PROCESSOR_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"No {PROCESSOR_NAME} in {folder!r}")
    return file


# ----- the steps, on channels-first numpy images ---------------------------------------------------------------------
def to_channels_first(image):
    """A PIL image or numpy array (H, W), (H, W, C) or (C, H, W) -> numpy (C, H, W). Like transformers, an array
    whose first dimension is 1, 3 or 4 counts as channels-first."""
    if hasattr(image, "getbands"):  # a PIL image
        array = np.array(image)
        return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    array = np.asarray(image)
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise ValueError(f"An image must be 2-D or 3-D, got shape {array.shape}")
    if array.shape[0] in (1, 3, 4):
        return array
    if array.shape[-1] in (1, 3, 4):
        return np.moveaxis(array, -1, 0)
    raise ValueError(f"Cannot tell the channel dimension of an image of shape {array.shape} (1, 3 or 4 channels "
                     "first or last)")


def _needs_byte_scaling(image):
    """Whether a float image in [0, 1] must be scaled to 0..255 to become a uint8 PIL image."""
    if image.dtype == np.uint8:
        return False
    if np.allclose(image, image.astype(int)):
        if image.min() >= 0 and image.max() <= 255:
            return False
        raise ValueError(f"An image with values in [{image.min()}, {image.max()}] cannot be converted to uint8 "
                         "for resizing (integers must lie in [0, 255])")
    if image.min() >= 0 and image.max() <= 1:
        return True
    raise ValueError(f"An image with values in [{image.min()}, {image.max()}] cannot be converted to uint8 for "
                     "resizing (floats must lie in [0, 1])")


def resize(image, height, width, resample=BILINEAR):
    """Resize a (C, H, W) image with Pillow as transformers does (uint8 in Pillow; floats in [0, 1] come back in
    [0, 1] as float32)."""
    scale = _needs_byte_scaling(image)
    pixels = np.moveaxis(image, 0, -1)
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if scale:
        pixels = rescale(pixels, 255)
    resized = np.array(_pil().fromarray(pixels.astype(np.uint8)).resize((width, height), resample=resample))
    resized = resized[None] if resized.ndim == 2 else np.moveaxis(resized, -1, 0)
    return rescale(resized, 1 / 255) if scale else resized


def rescale(image, factor):
    """``image * factor`` computed in float64, returned as float32."""
    return (image.astype(np.float64) * factor).astype(np.float32)


def normalize(image, mean, std):
    """``(image - mean) / std`` per channel of a (C, H, W) image, in float32 (or the image's float type)."""
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    channels = image.shape[0]
    mean = np.asarray(mean if isinstance(mean, (list, tuple)) else [mean] * channels, dtype=image.dtype)
    std = np.asarray(std if isinstance(std, (list, tuple)) else [std] * channels, dtype=image.dtype)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"image_mean and image_std need one value per channel ({channels}), got {len(mean)} and "
                         f"{len(std)}")
    return ((image.T - mean) / std).T


def _image_list(images, ndim):
    """One image, an array of them (one more dimension than ``ndim``) or a list -> a list of images."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if hasattr(images, "getbands"):
        return [images]
    array = np.asarray(images)
    if array.ndim == ndim + 1:
        return list(array)
    if array.ndim == ndim or (ndim == 3 and array.ndim == 2):
        return [array]
    raise ValueError(f"Expected an image of {ndim} dimensions or a batch of them, got shape {array.shape}")


class BaseImageProcessor(ProcessorConfigMixin):
    """Resize to ``size`` (``{"height": h, "width": w}`` or one int for a square), rescale by
    ``rescale_factor``, normalise with ``image_mean``/``image_std``; ``do_convert_rgb`` turns PIL images into RGB
    first. Call it on one image or a list (PIL images or numpy arrays)."""

    defaults = {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": BILINEAR, "do_rescale": True,
                "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": IMAGENET_STANDARD_MEAN,
                "image_std": IMAGENET_STANDARD_STD, "do_convert_rgb": None}
    ignored_keys = ProcessorConfigMixin.ignored_keys | {"crop_size", "input_data_format", "data_format"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.size = self._size_dict(self.size)

    @staticmethod
    def _size_dict(size):
        if isinstance(size, int) and not isinstance(size, bool):
            return {"height": size, "width": size}
        if isinstance(size, (list, tuple)) and len(size) == 2:
            return {"height": size[0], "width": size[1]}
        if isinstance(size, dict) and set(size) == {"height", "width"}:
            return dict(size)
        raise ValueError(f"size={size!r} is not supported: give {{'height': h, 'width': w}} or an int (square)")

    def _options(self, overrides):
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected option(s) {sorted(unknown)}")
        options = {key: overrides.get(key, getattr(self, key)) for key in self.defaults}
        options["size"] = self._size_dict(options["size"])
        return options

    def process_one(self, image, options):
        if options["do_convert_rgb"] and hasattr(image, "convert"):
            image = image.convert("RGB")
        image = to_channels_first(image)
        if options["do_resize"]:
            image = resize(image, options["size"]["height"], options["size"]["width"], options["resample"])
        if options["do_rescale"]:
            image = rescale(image, options["rescale_factor"])
        if options["do_normalize"]:
            image = normalize(image, options["image_mean"], options["image_std"])
        return image

    def preprocess(self, images, return_tensors=None, **overrides):
        options = self._options(overrides)
        pixel_values = [self.process_one(image, options) for image in _image_list(images, 3)]
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def __call__(self, images, *args, **kwargs):
        return self.preprocess(images, *args, **kwargs)


class ViTImageProcessor(BaseImageProcessor):
    """ViT's pre-processing: resize (bilinear) to 224x224, rescale to [0, 1], normalise with mean = std = 0.5."""


class SegformerImageProcessor(BaseImageProcessor):
    """SegFormer's pre-processing: images as :class:`BaseImageProcessor` (512x512, ImageNet mean/std);
    ``segmentation_maps`` resized with nearest neighbours into int64 ``labels``, after ``do_reduce_labels`` (0, the
    background, becomes 255 and the other labels drop by one)."""

    defaults = {**BaseImageProcessor.defaults, "size": {"height": 512, "width": 512},
                "image_mean": IMAGENET_DEFAULT_MEAN, "image_std": IMAGENET_DEFAULT_STD, "do_reduce_labels": False}
    renamed_keys = {"reduce_labels": "do_reduce_labels"}

    def preprocess(self, images, segmentation_maps=None, return_tensors=None, **overrides):
        options = self._options(overrides)
        data = {"pixel_values": [self.process_one(image, options) for image in _image_list(images, 3)]}
        if segmentation_maps is not None:
            data["labels"] = [self.process_map(m, options) for m in _image_list(segmentation_maps, 2)]
        return BatchFeature(data, tensor_type=return_tensors)

    @staticmethod
    def reduce_label(label_map):
        """0 (background) -> 255, other labels minus one, 255 kept."""
        label_map = label_map.copy()
        label_map[label_map == 0] = 255
        label_map = label_map - 1
        label_map[label_map == 254] = 255
        return label_map

    @staticmethod
    def process_map(label_map, options):
        array = np.array(label_map) if hasattr(label_map, "getbands") else np.asarray(label_map)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise ValueError(f"A segmentation map must be 2-D (height, width), got shape {array.shape}")
        if options["do_reduce_labels"]:
            array = SegformerImageProcessor.reduce_label(array)
        array = array[None]
        if options["do_resize"]:
            array = resize(array, options["size"]["height"], options["size"]["width"], NEAREST)
        return array[0].astype(np.int64)

    @staticmethod
    def post_process_semantic_segmentation(outputs, target_sizes=None):
        """Per image, the (height, width) int64 map of the highest-scoring label, after resizing the logits
        (bilinear, as ``torch.nn.functional.interpolate``) to ``target_sizes[i]`` when given."""
        from .segformer import bilinear_matrix

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs
        logits = logits.asnumpy() if hasattr(logits, "asnumpy") else np.asarray(logits)
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError("Make sure that you pass in as many target sizes as the batch dimension of the logits")
        maps = []
        for i, scores in enumerate(logits):
            if target_sizes is not None:
                height, width = (int(v) for v in target_sizes[i])
                scores = np.einsum("Hh,khw,Ww->kHW", bilinear_matrix(height, scores.shape[1]), scores,
                                   bilinear_matrix(width, scores.shape[2]))
            maps.append(scores.argmax(0).astype(np.int64))
        return maps


IMAGE_PROCESSOR_MAPPING = {"vit": ViTImageProcessor, "segformer": SegformerImageProcessor}
_PROCESSOR_CLASSES = {cls.__name__: cls for cls in (ViTImageProcessor, SegformerImageProcessor)}


class AutoImageProcessor:
    """The image processor named in ``preprocessor_config.json`` (``image_processor_type`` or the legacy
    ``feature_extractor_type``), else the one of the ``model_type`` in ``config.json``."""

    def __init__(self):
        raise EnvironmentError("Use AutoImageProcessor.from_pretrained(path)")

    @staticmethod
    def from_pretrained(path, **kwargs):
        file = _config_file(path, kwargs.get("revision"), kwargs.get("subfolder"))
        data = read_json_object(file)
        name = data.get("image_processor_type") or ""
        for suffix in ("Fast", "Pil"):
            name = name[: -len(suffix)] if name.endswith(suffix) else name
        if not name and data.get("feature_extractor_type"):
            name = data["feature_extractor_type"].replace("FeatureExtractor", "ImageProcessor")
        if name:
            if name not in _PROCESSOR_CLASSES:
                raise ValueError(f"{file}: unsupported image processor {name!r}; supported: "
                                 f"{sorted(_PROCESSOR_CLASSES)}")
            return _PROCESSOR_CLASSES[name].from_pretrained(path, **kwargs)
        config_file = os.path.join(os.path.dirname(file), "config.json")
        model_type = read_json_object(config_file).get("model_type") if os.path.isfile(config_file) else None
        if model_type not in IMAGE_PROCESSOR_MAPPING:
            raise ValueError(f"{file} names no image processor and the model_type {model_type!r} has none; "
                             f"supported: {sorted(IMAGE_PROCESSOR_MAPPING)}")
        return IMAGE_PROCESSOR_MAPPING[model_type].from_pretrained(path, **kwargs)

"""ViT as MindSpore Cells, with transformers 5's module names (``vit.layers.0.attention.q_proj``...).

Checkpoints keep the key names transformers writes and the Hub holds
(``vit.encoder.layer.0.attention.attention.query``): they are renamed on load and back on save, as transformers 5
does, so adapters carry transformers 5's module names, as HF peft writes them on transformers 5.
"""
import math
import re

from mindspore import nn, ops
from mindspore.ops.primitive import constexpr

from .configuration_utils import ConfigError, PretrainedConfig
from .layers import Activation, Dropout, LayerNorm, Linear, broadcast_like, init_param, uniform_param
from .model_outputs import (_output_class, concat, merge_heads, scaled_dot_product_attention,
                            sequence_classification_loss, split_heads, swap_axes, with_optional)
from .modeling_utils import PreTrainedModel

BaseModelOutputWithPooling = _output_class(
    "BaseModelOutputWithPooling", ("last_hidden_state", "pooler_output", "hidden_states", "attentions"),
    "Vision backbone output with the pooled first token.")
ImageClassifierOutput = _output_class("ImageClassifierOutput", ("loss", "logits", "hidden_states", "attentions"),
                                      "Image classification output.")


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


class Conv2d(nn.Cell):
    """2-D convolution with ``torch.nn.Conv2d``'s parameters: ``weight`` (out, in / groups, kh, kw) and ``bias``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        bound = 1.0 / math.sqrt(in_channels // groups * self.kernel_size[0] * self.kernel_size[1])
        self.weight = uniform_param((out_channels, in_channels // groups) + self.kernel_size, bound, "weight")
        self.bias = uniform_param((out_channels,), bound, "bias") if bias else None

    def construct(self, x):
        return ops.conv2d(x, self.weight, self.bias, stride=self.stride, pad_mode="pad", padding=self.padding,
                          groups=self.groups)

    def extend_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}")


class CheckpointRenames:
    """Two-way renaming between checkpoint keys (transformers 4's layout, which transformers 5 still reads and
    writes) and module names (transformers 5's layout), mirroring transformers' ``conversion_mapping``.

    ``rules`` are ``(checkpoint fragment, module fragment)`` pairs of dotted names in which ``*`` stands for a layer
    index; a fragment matches whole name parts. Loading applies every rule in order, saving the reverse rules in
    reverse order.
    """

    def __init__(self, *rules):
        self.to_model = [self._compile(old, new) for old, new in rules]
        self.to_checkpoint = [self._compile(new, old) for old, new in reversed(rules)]

    @staticmethod
    def _compile(source, target):
        pattern = re.escape(source).replace(r"\*", r"(\d+)")
        replacement, index = "", 0
        for part in re.split(r"(\*)", target):
            if part == "*":
                index += 1
                replacement += f"\\{index}"
            else:
                replacement += part.replace("\\", "\\\\")
        return re.compile(rf"(?<![^.]){pattern}(?![^.])"), replacement

    @staticmethod
    def _apply(key, rules):
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key, count=1)
        return key

    def model_key(self, checkpoint_key):
        return self._apply(checkpoint_key, self.to_model)

    def checkpoint_key(self, model_key):
        return self._apply(model_key, self.to_checkpoint)


class RenamedCheckpointMixin:
    """For models whose module names differ from their checkpoint keys (``checkpoint_renames``): loading takes
    either naming, :meth:`state_dict` (and so ``save_pretrained``) gives the checkpoint keys."""

    checkpoint_renames = CheckpointRenames()

    def load_state_dict(self, state_dict, strict=None, source=None):
        renamed = {self.checkpoint_renames.model_key(k): v for k, v in state_dict.items()}
        return super().load_state_dict(renamed, strict=strict, source=source)

    def state_dict(self):
        """``{checkpoint key: numpy array}`` of every parameter, with the key names transformers writes."""
        return {self.checkpoint_renames.checkpoint_key(k): v for k, v in super().state_dict().items()}


class ViTConfig(PretrainedConfig):
    model_type = "vit"
    defaults = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                "initializer_range": 0.02, "layer_norm_eps": 1e-12, "image_size": 224, "patch_size": 16,
                "num_channels": 3, "qkv_bias": True, "encoder_stride": 16, "pooler_output_size": None,
                "pooler_act": "tanh"}
    required_keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                     "patch_size")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.pooler_output_size:
            self.pooler_output_size = self.hidden_size
        self.check_sizes(positive=("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                   "num_channels", "pooler_output_size"),
                         divisible=(("hidden_size", "num_attention_heads"),))
        for key in ("image_size", "patch_size"):
            value = _pair(getattr(self, key))
            if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise ConfigError(self.model_type, [f"{key}={getattr(self, key)!r} must be a positive integer or a "
                                                    "pair of them"])
        if any(i < p for i, p in zip(_pair(self.image_size), _pair(self.patch_size))):
            raise ConfigError(self.model_type, [f"patch_size={self.patch_size!r} is larger than "
                                                f"image_size={self.image_size!r}"])


@constexpr(check=False)
def _check_pixel_values(shape, num_channels, image_size):
    if shape is None:
        raise ValueError("You have to specify pixel_values")
    if len(shape) != 4:
        raise ValueError(f"pixel_values must be 4-D (batch_size, num_channels, height, width), got shape "
                         f"{tuple(shape)}")
    if shape[1] != num_channels:
        raise ValueError("Make sure that the channel dimension of the pixel values match with the one set in the "
                         f"configuration. Expected {num_channels} but got {shape[1]}.")
    if image_size is not None and tuple(shape[2:]) != tuple(image_size):
        raise ValueError(f"Input image size ({shape[2]}*{shape[3]}) doesn't match model "
                         f"({image_size[0]}*{image_size[1]}).")


def check_pixel_values(pixel_values, num_channels, image_size=None):
    """Shape checks of ``pixel_values`` (both modes): 4-D, ``num_channels`` channels, ``image_size`` if given."""
    _check_pixel_values(None if pixel_values is None else tuple(pixel_values.shape), num_channels, image_size)


@constexpr(check=False)
def _reject_interpolation(interpolate_pos_encoding):
    if interpolate_pos_encoding:
        raise ValueError("interpolate_pos_encoding=True is not supported by mindpeft's ViT: resize the images to "
                         "the config's image_size")


class ViTPatchEmbeddings(nn.Cell):
    """Non-overlapping patches (a convolution with stride = kernel = ``patch_size``) -> (batch, patches, hidden)."""

    def __init__(self, config):
        super().__init__()
        self.image_size, self.patch_size = _pair(config.image_size), _pair(config.patch_size)
        self.num_channels = config.num_channels
        self.num_patches = (self.image_size[0] // self.patch_size[0]) * (self.image_size[1] // self.patch_size[1])
        self.projection = Conv2d(config.num_channels, config.hidden_size, self.patch_size, stride=self.patch_size)

    def construct(self, pixel_values):
        out = self.projection(pixel_values)
        batch, channels = out.shape[0], out.shape[1]
        return swap_axes(out.view(batch, channels, -1))


class ViTEmbeddings(nn.Cell):
    """CLS token + patch embeddings + learned position embeddings."""

    def __init__(self, config):
        super().__init__()
        std = config.initializer_range
        self.cls_token = init_param((1, 1, config.hidden_size), std, "cls_token")
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.position_embeddings = init_param((1, self.patch_embeddings.num_patches + 1, config.hidden_size), std,
                                              "position_embeddings")
        self.dropout = Dropout(config.hidden_dropout_prob)

    def construct(self, pixel_values):
        embeddings = self.patch_embeddings(pixel_values)
        batch, hidden = embeddings.shape[0], embeddings.shape[2]
        cls = ops.broadcast_to(self.cls_token, (batch, 1, hidden))
        embeddings = concat((cls, embeddings), 1)
        return self.dropout(embeddings + broadcast_like(self.position_embeddings, embeddings))


class ViTAttention(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        inner = self.num_heads * self.head_dim
        std = config.initializer_range
        self.q_proj = Linear(config.hidden_size, inner, config.qkv_bias, std)
        self.k_proj = Linear(config.hidden_size, inner, config.qkv_bias, std)
        self.v_proj = Linear(config.hidden_size, inner, config.qkv_bias, std)
        self.o_proj = Linear(inner, config.hidden_size, True, std)
        self.attention_dropout = Dropout(config.attention_probs_dropout_prob)
        self.scale = self.head_dim ** -0.5

    def construct(self, hidden_states):
        query = split_heads(self.q_proj(hidden_states), self.num_heads, self.head_dim)
        key = split_heads(self.k_proj(hidden_states), self.num_heads, self.head_dim)
        value = split_heads(self.v_proj(hidden_states), self.num_heads, self.head_dim)
        attn = scaled_dot_product_attention(query, key, value, None, self.scale, self.attention_dropout)
        return self.o_proj(merge_heads(attn))


class ViTMLP(nn.Cell):
    def __init__(self, config):
        super().__init__()
        std = config.initializer_range
        self.fc1 = Linear(config.hidden_size, config.intermediate_size, std=std)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size, std=std)
        self.activation_fn = Activation(config.hidden_act)

    def construct(self, x):
        return self.fc2(self.activation_fn(self.fc1(x)))


class ViTLayer(nn.Cell):
    """Pre-norm transformer block."""

    def __init__(self, config):
        super().__init__()
        self.attention = ViTAttention(config)
        self.layernorm_before = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.layernorm_after = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def construct(self, hidden_states):
        hidden_states = hidden_states + self.dropout(self.attention(self.layernorm_before(hidden_states)))
        return hidden_states + self.dropout(self.mlp(self.layernorm_after(hidden_states)))


class ViTPooler(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.pooler_output_size, std=config.initializer_range)
        self.activation = Activation(config.pooler_act)

    def construct(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


VIT_CHECKPOINT_RENAMES = CheckpointRenames(
    ("encoder.layer.*", "layers.*"),
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
)


class ViTPreTrainedModel(RenamedCheckpointMixin, PreTrainedModel):
    config_class = ViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    checkpoint_renames = VIT_CHECKPOINT_RENAMES


class ViTModel(ViTPreTrainedModel):
    output_class = BaseModelOutputWithPooling

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = ViTEmbeddings(config)
        self.layers = nn.CellList([ViTLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self.image_size = _pair(config.image_size)

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    def construct(self, pixel_values=None, interpolate_pos_encoding=None):
        """``pixel_values``: (batch, num_channels, height, width) at the config's ``image_size``."""
        _reject_interpolation(interpolate_pos_encoding)
        check_pixel_values(pixel_values, self.config.num_channels, self.image_size)
        weight = self.embeddings.patch_embeddings.projection.weight
        hidden_states = self.embeddings(pixel_values.astype(weight.dtype))
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        hidden_states = self.layernorm(hidden_states)
        pooled = self.pooler(hidden_states) if self.pooler is not None else None
        return with_optional({"last_hidden_state": hidden_states}, pooler_output=pooled)


class ViTForImageClassification(ViTPreTrainedModel):
    """ViT with a linear ``classifier`` on the final CLS token; ``labels`` give cross entropy (MSE when
    ``num_labels == 1``)."""

    output_class = ImageClassifierOutput

    def __init__(self, config):
        super().__init__(config)
        config.check_sizes(positive=("num_labels",))
        self.num_labels = config.num_labels
        self.vit = ViTModel(config, add_pooling_layer=False)
        self.classifier = Linear(config.hidden_size, config.num_labels, std=config.initializer_range)

    def get_input_embeddings(self):
        return self.vit.get_input_embeddings()

    def construct(self, pixel_values=None, labels=None, interpolate_pos_encoding=None):
        hidden_states = self.vit(pixel_values, interpolate_pos_encoding)["last_hidden_state"]
        logits = self.classifier(hidden_states[:, 0, :])
        loss = sequence_classification_loss(logits, labels, self.num_labels) if labels is not None else None
        return with_optional({"logits": logits}, loss=loss)

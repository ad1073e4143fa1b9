"""SegFormer (Mix Transformer encoder + all-MLP decode head) as MindSpore Cells, with transformers 5's module names
(``segformer.stages.0.blocks.0.attention.q_proj``...); checkpoints keep the Hub's key names
(``segformer.encoder.block.0.0.attention.self.query``...), renamed on load and back on save as transformers 5 does.
"""
import functools

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, mint, nn, ops
from mindspore.ops.primitive import constexpr

from .configuration_utils import ConfigError, PretrainedConfig
from .layers import Activation, Dropout, LayerNorm, Linear, broadcast_like, ones_param
from .model_outputs import (BaseModelOutput, _output_class, concat, cross_entropy, merge_heads,
                            scaled_dot_product_attention, split_heads, swap_axes, with_optional)
from .modeling_utils import PreTrainedModel
from .vit import CheckpointRenames, Conv2d, RenamedCheckpointMixin, check_pixel_values

SemanticSegmenterOutput = _output_class("SemanticSegmenterOutput", ("loss", "logits", "hidden_states", "attentions"),
                                        "Semantic segmentation output: logits (batch, num_labels, height / 4, "
                                        "width / 4).")
_PER_STAGE = ("depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides", "num_attention_heads", "mlp_ratios")
_LAYER_NORM_EPS = 1e-5  # transformers' SegFormer uses torch's default, not config.layer_norm_eps


class SegformerConfig(PretrainedConfig):
    model_type = "segformer"
    defaults = {"num_channels": 3, "num_encoder_blocks": 4, "depths": [2, 2, 2, 2], "sr_ratios": [8, 4, 2, 1],
                "hidden_sizes": [32, 64, 160, 256], "patch_sizes": [7, 3, 3, 3], "strides": [4, 2, 2, 2],
                "num_attention_heads": [1, 2, 5, 8], "mlp_ratios": [4, 4, 4, 4], "hidden_act": "gelu",
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout_prob": 0.1,
                "initializer_range": 0.02, "drop_path_rate": 0.1, "layer_norm_eps": 1e-6,
                "decoder_hidden_size": 256, "semantic_loss_ignore_index": 255, "reshape_last_stage": True}
    attribute_map = {"num_hidden_layers": "num_encoder_blocks"}
    required_keys = ("hidden_sizes", "depths", "num_attention_heads", "sr_ratios")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.check_sizes(positive=("num_channels", "num_encoder_blocks", "decoder_hidden_size"))
        problems = []
        for key in _PER_STAGE:
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or len(value) != self.num_encoder_blocks:
                problems.append(f"{key}={value!r} must list one value per encoder block "
                                f"(num_encoder_blocks={self.num_encoder_blocks})")
            elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
                problems.append(f"{key}={value!r} must hold positive numbers")
        if not problems:
            problems += [f"hidden_sizes[{i}]={h} is not divisible by num_attention_heads[{i}]={n}"
                         for i, (h, n) in enumerate(zip(self.hidden_sizes, self.num_attention_heads)) if h % n]
        if self.reshape_last_stage is not True:
            problems.append(f"reshape_last_stage={self.reshape_last_stage!r} is not supported (only True)")
        if problems:
            raise ConfigError(self.model_type, problems)


# ----- bilinear resizing as torch.nn.functional.interpolate(mode="bilinear", align_corners=False) ---------------------
def bilinear_matrix(out_size, in_size):
    """(out_size, in_size) float32 weights of torch's bilinear interpolation without corner alignment: source
    coordinate ``(i + 0.5) * in / out - 0.5``, clamped at 0, between its two neighbours (the last one repeated)."""
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = source - low
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _bilinear_tensor(out_size, in_size):
    return Tensor(bilinear_matrix(out_size, in_size).T.copy())


@constexpr(check=False)
def _bilinear_weights(out_size, in_size):
    return _bilinear_tensor(out_size, in_size)


def resize_bilinear(x, size):
    """(batch, channels, h, w) -> (batch, channels, size[0], size[1]) as two matrix products (exact gradients, CPU
    kernels, constant weights under ``mindspore.jit``)."""
    batch, channels, height, width = x.shape
    out_h, out_w = size
    if (height, width) == (out_h, out_w):
        return x
    x = ops.matmul(x.reshape(-1, width), _bilinear_weights(out_w, width).astype(x.dtype))
    x = swap_axes(x.reshape(batch * channels, height, out_w)).reshape(-1, height)
    x = ops.matmul(x, _bilinear_weights(out_h, height).astype(x.dtype))
    return swap_axes(x.reshape(batch, channels, out_w, out_h), 2, 3)


# ----- encoder --------------------------------------------------------------------------------------------------------
class DropPath(nn.Cell):
    """Stochastic depth: drops whole samples of a residual branch with probability ``p`` in training."""

    def __init__(self, p):
        super().__init__()
        self.p = p
        self.dropout = Dropout(p)

    def construct(self, x):
        if self.p == 0.0 or not self.training:
            return x
        return x * self.dropout(ops.ones((x.shape[0],) + (1,) * (x.ndim - 1), x.dtype))


class SegformerOverlapPatchEmbeddings(nn.Cell):
    """Overlapping patches (a strided convolution) -> (batch, height * width, hidden), height, width."""

    def __init__(self, patch_size, stride, num_channels, hidden_size):
        super().__init__()
        self.proj = Conv2d(num_channels, hidden_size, patch_size, stride=stride, padding=patch_size // 2)
        self.layer_norm = LayerNorm(hidden_size, _LAYER_NORM_EPS)

    def construct(self, pixel_values):
        embeddings = self.proj(pixel_values)
        batch, channels, height, width = embeddings.shape
        embeddings = swap_axes(embeddings.view(batch, channels, height * width))
        return self.layer_norm(embeddings), height, width


def tokens_to_image(x, height, width):
    """(batch, height * width, channels) -> (batch, channels, height, width)."""
    return swap_axes(x).reshape(x.shape[0], x.shape[2], height, width)


def image_to_tokens(x):
    """(batch, channels, height, width) -> (batch, height * width, channels)."""
    return swap_axes(x.reshape(x.shape[0], x.shape[1], -1))


class SegformerSequenceReduction(nn.Cell):
    """Shortens the key/value sequence by ``ratio`` per side with a strided convolution."""

    def __init__(self, hidden_size, ratio):
        super().__init__()
        self.sequence_reduction = Conv2d(hidden_size, hidden_size, ratio, stride=ratio)
        self.layer_norm = LayerNorm(hidden_size, _LAYER_NORM_EPS)

    def construct(self, hidden_states, height, width):
        reduced = self.sequence_reduction(tokens_to_image(hidden_states, height, width))
        return self.layer_norm(image_to_tokens(reduced))


class SegformerAttention(nn.Cell):
    """Efficient self-attention: queries attend to a sequence-reduced set of keys and values."""

    def __init__(self, config, hidden_size, num_heads, sr_ratio):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim ** -0.5
        std = config.initializer_range
        self.q_proj = Linear(hidden_size, hidden_size, std=std)
        self.k_proj = Linear(hidden_size, hidden_size, std=std)
        self.v_proj = Linear(hidden_size, hidden_size, std=std)
        self.o_proj = Linear(hidden_size, hidden_size, std=std)
        self.sr_ratio = sr_ratio
        self.sequence_reduction = SegformerSequenceReduction(hidden_size, sr_ratio) if sr_ratio > 1 else None
        self.attention_dropout = Dropout(config.attention_probs_dropout_prob)

    def construct(self, hidden_states, height, width):
        query = split_heads(self.q_proj(hidden_states), self.num_heads, self.head_dim)
        source = hidden_states
        if self.sequence_reduction is not None:
            source = self.sequence_reduction(hidden_states, height, width)
        key = split_heads(self.k_proj(source), self.num_heads, self.head_dim)
        value = split_heads(self.v_proj(source), self.num_heads, self.head_dim)
        attn = scaled_dot_product_attention(query, key, value, None, self.scale, self.attention_dropout)
        return self.o_proj(merge_heads(attn))


class SegformerDepthWiseConv(nn.Cell):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = Conv2d(dim, dim, 3, stride=1, padding=1, groups=dim)

    def construct(self, hidden_states, height, width):
        return image_to_tokens(self.dwconv(tokens_to_image(hidden_states, height, width)))


class SegformerMixMLP(nn.Cell):
    """Mix-FFN: linear, 3x3 depthwise convolution (the positional signal), activation, linear."""

    def __init__(self, config, in_features, hidden_features):
        super().__init__()
        std = config.initializer_range
        self.fc1 = Linear(in_features, hidden_features, std=std)
        self.dwconv = SegformerDepthWiseConv(hidden_features)
        self.activation_fn = Activation(config.hidden_act)
        self.fc2 = Linear(hidden_features, in_features, std=std)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def construct(self, hidden_states, height, width):
        hidden_states = self.activation_fn(self.dwconv(self.fc1(hidden_states), height, width))
        return self.dropout(self.fc2(self.dropout(hidden_states)))


class SegformerLayer(nn.Cell):
    def __init__(self, config, hidden_size, num_heads, drop_path, sr_ratio, mlp_ratio):
        super().__init__()
        self.layernorm_before = LayerNorm(hidden_size, _LAYER_NORM_EPS)
        self.attention = SegformerAttention(config, hidden_size, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.layernorm_after = LayerNorm(hidden_size, _LAYER_NORM_EPS)
        self.mlp = SegformerMixMLP(config, hidden_size, int(hidden_size * mlp_ratio))
        self.hidden_dropout = Dropout(config.hidden_dropout_prob)

    def construct(self, hidden_states, height, width):
        attn = self.hidden_dropout(self.attention(self.layernorm_before(hidden_states), height, width))
        hidden_states = hidden_states + self.drop_path(attn)
        return hidden_states + self.drop_path(self.mlp(self.layernorm_after(hidden_states), height, width))


class SegformerStage(nn.Cell):
    """Patch embedding, transformer blocks and a final norm; output (batch, hidden, height, width)."""

    def __init__(self, config, index, drop_paths):
        super().__init__()
        start = sum(config.depths[:index])
        hidden = config.hidden_sizes[index]
        self.patch_embeddings = SegformerOverlapPatchEmbeddings(
            config.patch_sizes[index], config.strides[index],
            config.num_channels if index == 0 else config.hidden_sizes[index - 1], hidden)
        self.blocks = nn.CellList([
            SegformerLayer(config, hidden, config.num_attention_heads[index], drop_paths[start + i],
                           config.sr_ratios[index], config.mlp_ratios[index])
            for i in range(config.depths[index])])
        self.layer_norm = LayerNorm(hidden, _LAYER_NORM_EPS)

    def construct(self, hidden_states):
        hidden_states, height, width = self.patch_embeddings(hidden_states)
        for block in self.blocks:
            hidden_states = block(hidden_states, height, width)
        return tokens_to_image(self.layer_norm(hidden_states), height, width)


SEGFORMER_CHECKPOINT_RENAMES = CheckpointRenames(
    ("encoder.patch_embeddings.*", "stages.*.patch_embeddings"),
    ("encoder.block.*.*", "stages.*.blocks.*"),
    ("encoder.layer_norm.*", "stages.*.layer_norm"),
    ("attention.self.query", "attention.q_proj"),
    ("attention.self.key", "attention.k_proj"),
    ("attention.self.value", "attention.v_proj"),
    ("attention.self.sr", "attention.sequence_reduction.sequence_reduction"),
    ("attention.self.layer_norm", "attention.sequence_reduction.layer_norm"),
    ("attention.output.dense", "attention.o_proj"),
    ("mlp.dense1", "mlp.fc1"),
    ("mlp.dense2", "mlp.fc2"),
    ("layer_norm_1", "layernorm_before"),
    ("layer_norm_2", "layernorm_after"),
    ("decode_head.linear_c", "decode_head.linear_projections"),
)


class SegformerPreTrainedModel(RenamedCheckpointMixin, PreTrainedModel):
    config_class = SegformerConfig
    base_model_prefix = "segformer"
    main_input_name = "pixel_values"
    checkpoint_renames = SEGFORMER_CHECKPOINT_RENAMES
    _head_modules = ("decode_head",)


class SegformerModel(SegformerPreTrainedModel):
    """The Mix Transformer encoder; ``last_hidden_state`` is the last stage's (batch, hidden, height, width) map,
    ``hidden_states`` (with ``output_hidden_states``) every stage's."""

    output_class = BaseModelOutput

    def __init__(self, config):
        super().__init__(config)
        total = sum(config.depths)
        drop_paths = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.CellList([SegformerStage(config, i, drop_paths) for i in range(config.num_encoder_blocks)])

    def get_input_embeddings(self):
        return self.stages[0].patch_embeddings

    def construct(self, pixel_values=None, output_hidden_states=False):
        check_pixel_values(pixel_values, self.config.num_channels)
        hidden_states = pixel_values.astype(self.stages[0].patch_embeddings.proj.weight.dtype)
        all_states = ()
        for stage in self.stages:
            hidden_states = stage(hidden_states)
            all_states = all_states + (hidden_states,)
        return with_optional({"last_hidden_state": hidden_states},
                             hidden_states=all_states if output_hidden_states else None)


# ----- decode head ----------------------------------------------------------------------------------------------------
class BatchNorm2d(nn.Cell):
    """``torch.nn.BatchNorm2d`` with its parameter and statistic names. Training normalises with the batch
    statistics and updates the running ones (momentum 0.1, unbiased variance); evaluation uses the running ones.
    The statistics are Parameters that do not train (``requires_grad=False``), so they load and save with the
    weights."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = ones_param(num_features, "weight")
        self.bias = Parameter(Tensor(np.zeros(num_features, np.float32)), name="bias")
        self.running_mean = Parameter(Tensor(np.zeros(num_features, np.float32)), name="running_mean",
                                      requires_grad=False)
        self.running_var = Parameter(Tensor(np.ones(num_features, np.float32)), name="running_var",
                                     requires_grad=False)
        self.num_batches_tracked = Parameter(Tensor(np.array(0, np.int64)), name="num_batches_tracked",
                                             requires_grad=False)

    def construct(self, x):
        if self.training:
            mean = x.mean(axis=(0, 2, 3))
            centred = x - ops.broadcast_to(mean.view(1, -1, 1, 1), x.shape)
            var = (centred * centred).mean(axis=(0, 2, 3))
            count = x.size // x.shape[1]
            unbiased = ops.stop_gradient(var) * (count / max(count - 1, 1))
            ops.assign(self.running_mean, (1 - self.momentum) * self.running_mean
                       + self.momentum * ops.stop_gradient(mean))
            ops.assign(self.running_var, (1 - self.momentum) * self.running_var + self.momentum * unbiased)
            ops.assign_add(self.num_batches_tracked, Tensor(1, ms.int64))
        else:
            centred = x - broadcast_like(self.running_mean.view(1, -1, 1, 1), x)
            var = self.running_var
        scale = ops.rsqrt(var + self.eps) * self.weight
        return centred * broadcast_like(scale.view(1, -1, 1, 1), x) + broadcast_like(self.bias.view(1, -1, 1, 1), x)

    def extend_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class SegformerMLP(nn.Cell):
    def __init__(self, config, input_dim):
        super().__init__()
        self.proj = Linear(input_dim, config.decoder_hidden_size, std=config.initializer_range)

    def construct(self, x):
        return self.proj(image_to_tokens(x))


class SegformerDecodeHead(nn.Cell):
    """Projects every stage to ``decoder_hidden_size``, upsamples to the first stage's size (H/4), fuses them
    (1x1 convolution, batch norm, ReLU) and classifies each pixel."""

    def __init__(self, config):
        super().__init__()
        hidden = config.decoder_hidden_size
        self.linear_projections = nn.CellList([SegformerMLP(config, size) for size in config.hidden_sizes])
        self.linear_fuse = Conv2d(hidden * config.num_encoder_blocks, hidden, 1, bias=False)
        self.batch_norm = BatchNorm2d(hidden)
        self.dropout = Dropout(config.classifier_dropout_prob)
        self.classifier = Conv2d(hidden, config.num_labels, 1)

    def construct(self, encoder_hidden_states):
        target = encoder_hidden_states[0].shape[2:]
        projected = ()
        for state, projection in zip(encoder_hidden_states, self.linear_projections):
            height, width = state.shape[2], state.shape[3]
            features = tokens_to_image(projection(state), height, width)
            projected = (resize_bilinear(features, target),) + projected
        hidden_states = ops.relu(self.batch_norm(self.linear_fuse(concat(projected, 1))))
        return self.classifier(self.dropout(hidden_states))


@constexpr(check=False)
def _check_segmentation_labels(labels_shape, logits_shape, num_labels):
    if num_labels < 1:
        raise ValueError(f"Number of labels should be >=0: {num_labels}")
    if len(labels_shape) != 3 or labels_shape[0] != logits_shape[0]:
        raise ValueError(f"labels must be (batch_size, height, width) segmentation maps for the batch of "
                         f"{logits_shape[0]}, got shape {tuple(labels_shape)}")


def binary_cross_entropy_with_logits(logits, targets):
    """Elementwise ``-(y log sigmoid(x) + (1 - y) log sigmoid(-x))``, stable for large ``|x|``."""
    return ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))


class SegformerForSemanticSegmentation(SegformerPreTrainedModel):
    """SegFormer with the all-MLP decode head: ``logits`` (batch, num_labels, height / 4, width / 4). ``labels``
    (batch, height, width) give the loss of the logits upsampled (bilinear) to the labels' size: cross entropy that
    ignores ``semantic_loss_ignore_index`` (255), or for one label a binary cross entropy averaged over all pixels
    with the ignored ones zeroed, as transformers does."""

    output_class = SemanticSegmenterOutput

    def __init__(self, config):
        super().__init__(config)
        self.segformer = SegformerModel(config)
        self.decode_head = SegformerDecodeHead(config)
        self.num_labels = config.num_labels
        self.ignore_index = config.semantic_loss_ignore_index

    def get_input_embeddings(self):
        return self.segformer.get_input_embeddings()

    def construct(self, pixel_values=None, labels=None):
        stages = self.segformer(pixel_values, True)["hidden_states"]
        logits = self.decode_head(stages)
        loss = self.segmentation_loss(logits, labels) if labels is not None else None
        return with_optional({"logits": logits}, loss=loss)

    def segmentation_loss(self, logits, labels):
        _check_segmentation_labels(tuple(labels.shape), tuple(logits.shape), self.num_labels)
        upsampled = resize_bilinear(logits, labels.shape[1:])
        if self.num_labels > 1:
            flat = mint.permute(upsampled, (0, 2, 3, 1)).reshape(-1, self.num_labels)
            return cross_entropy(flat, labels.reshape(-1), ignore_index=self.ignore_index)
        valid = ((labels >= 0) & (labels != self.ignore_index)).astype(upsampled.dtype)
        loss = binary_cross_entropy_with_logits(upsampled[:, 0], labels.astype(upsampled.dtype))
        return (loss * valid).mean()

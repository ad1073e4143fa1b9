"""LoRA+ (Hayou et al., 2024): ``lora_B`` learns ``loraplus_lr_ratio`` times faster than ``lora_A``, with HF peft's
parameter groups, for MindSpore's optimizers (``mindspore.experimental.optim`` and ``mindspore.nn`` ones)."""
from mindspore import mint, nn

from ..models.layers import LayerNorm
from ..utils.other import get_submodule

LAYERNORM_TYPES = (nn.LayerNorm, mint.nn.LayerNorm, LayerNorm)  # transformers' ALL_LAYERNORM_LAYERS


def _layernorm_parameter_names(model):
    """Names of the parameters that sit in a LayerNorm (transformers' trainers never decay them)."""
    return {f"{key}.{name}" if key else name for key, cell in model.cells_and_names()
            if isinstance(cell, LAYERNORM_TYPES) for name, _ in cell.parameters_and_names()}


def loraplus_parameter_groups(model):
    """HF peft's LoRA+ groups of ``model``'s trainable Parameters: ``"embedding"`` (the factors of LoRA on
    embeddings), ``"groupB"`` / ``"groupB_no_decay"`` (``lora_B`` and every 1-D Parameter; biases and LayerNorm
    weights not decayed) and ``"groupA"`` (the rest)."""
    from ..tuners.lora.layer import Embedding as LoraEmbedding

    no_decay = _layernorm_parameter_names(model)
    groups = {"groupA": [], "groupB": [], "groupB_no_decay": [], "embedding": []}
    for name, param in model.parameters_and_names():
        if not param.requires_grad:
            continue
        owner = name.rsplit(".", 2)[0] if name.count(".") >= 2 else ""
        try:
            module = get_submodule(model, owner) if owner else None
        except AttributeError:
            module = None
        if isinstance(module, LoraEmbedding):
            groups["embedding"].append(param)
        elif "lora_B" in name or len(param.shape) == 1:
            decays = name not in no_decay and "bias" not in name
            groups["groupB" if decays else "groupB_no_decay"].append(param)
        else:
            groups["groupA"].append(param)
    return groups


def create_loraplus_optimizer(model, optimizer_cls, *, lr, loraplus_lr_ratio, **kwargs):
    """An ``optimizer_cls`` over ``model``'s trainable Parameters in HF peft's LoRA+ groups: ``lora_A`` and the rest
    at ``lr``, ``lora_B`` (and 1-D Parameters) at ``lr * loraplus_lr_ratio``, LoRA factors of embeddings at
    ``loraplus_lr_embedding`` (default 1e-6); ``loraplus_weight_decay`` (default 0) for all but biases and LayerNorm
    weights. Other ``kwargs`` go to ``optimizer_cls`` (a ``mindspore.experimental.optim`` class, or a
    ``mindspore.nn.Optimizer`` one, which gets ``lr`` as ``learning_rate``). Empty groups are left out.
    """
    weight_decay = kwargs.pop("loraplus_weight_decay", 0.0)
    lr_embedding = kwargs.pop("loraplus_lr_embedding", 1e-6)
    groups = loraplus_parameter_groups(model)
    settings = {"groupA": (lr, weight_decay), "embedding": (lr_embedding, weight_decay),
                "groupB": (lr * loraplus_lr_ratio, weight_decay), "groupB_no_decay": (lr * loraplus_lr_ratio, 0.0)}
    param_groups = [{"params": groups[name], "lr": group_lr, "weight_decay": decay}
                    for name, (group_lr, decay) in settings.items() if groups[name]]
    if isinstance(optimizer_cls, type) and issubclass(optimizer_cls, nn.Optimizer):
        return optimizer_cls(param_groups, learning_rate=lr, **kwargs)
    return optimizer_cls(param_groups, lr=lr, **kwargs)

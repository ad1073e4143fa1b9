"""The adapted attention of LLaMA-Adapter."""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ...models.model_outputs import merge_heads
from ..tuners_utils import BaseTunerLayer


class AdaptedAttention(nn.Cell, BaseTunerLayer):
    """Wraps a LLaMA-style attention (``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``query_states``): adds
    ``o_proj(adaption_gate * softmax(q k_p^T / sqrt(d)) v_p)`` where ``k_p``, ``v_p`` project ``adaption_prompt``
    (without rotary embedding), as HF peft does."""

    adapter_layer_names = ("adaption_prompt", "adaption_gate")

    def __init__(self, attention, adapter_name, adapter_len, hidden_size):
        super().__init__()
        if not hasattr(attention, "query_states"):
            raise ValueError(f"AdaptionPrompt needs a LLaMA-style attention Cell, got {type(attention).__name__}")
        self._init_tuner_layer(attention)
        self.adapter_name = adapter_name
        self.adapter_len = adapter_len
        self.adaption_prompt = Parameter(Tensor(np.random.normal(0, 1, (1, adapter_len, hidden_size)).astype(np.float32)))
        self.adaption_gate = Parameter(Tensor(np.zeros(1, np.float32)))
        self.num_heads = attention.num_heads
        self.num_kv_heads = attention.num_kv_heads
        self.head_dim = attention.head_dim
        self.set_adapter((adapter_name,))

    def adapter_names(self):
        return [self.adapter_name]

    def adapter_parameter_names(self, adapter_name):
        return list(self.adapter_layer_names) if adapter_name == self.adapter_name else []

    def set_adapter(self, adapter_names):
        names = (adapter_names,) if isinstance(adapter_names, str) else tuple(adapter_names)
        self.active_adapters = names
        for param in (self.adaption_prompt, self.adaption_gate):
            param.requires_grad = self.adapter_name in names
        self._refresh_active()

    def delete_adapter(self, adapter_name):
        raise ValueError("Delete the LLaMA-Adapter with unload(); it holds a single adapter")

    def merge(self, safe_merge=False, adapter_names=None):
        raise ValueError("LLaMA-Adapter (adaption prompt) cannot be merged into the base weights")

    def unmerge(self):
        """Nothing is ever merged."""

    def _project(self, proj, heads):
        return proj(self.adaption_prompt).view(1, self.adapter_len, heads, self.head_dim).swapaxes(1, 2)

    def construct(self, hidden_states, cos, sin, bias=None, layer_past=None, use_cache=False):
        output, present = self.base_layer(hidden_states, cos, sin, bias, layer_past, use_cache)
        if self.disable_adapters or not self._active_in_layer:
            return output, present
        attention = self.base_layer
        batch = output.shape[0]
        rep = self.num_heads // self.num_kv_heads
        adapter_k = ops.repeat_interleave(self._project(attention.k_proj, self.num_kv_heads), rep, 1)
        adapter_v = ops.repeat_interleave(self._project(attention.v_proj, self.num_kv_heads), rep, 1)
        query = attention.query_states(hidden_states, cos, sin)
        scores = ops.matmul(query, adapter_k.swapaxes(2, 3).astype(query.dtype)) / math.sqrt(self.head_dim)
        scores = self.adaption_gate * ops.softmax(scores.astype(ms.float32), -1).astype(query.dtype)
        adapter_out = ops.matmul(scores, ops.broadcast_to(adapter_v, (batch,) + adapter_v.shape[1:]))
        adapter_out = merge_heads(adapter_out)
        return output + attention.o_proj(adapter_out).astype(output.dtype), present


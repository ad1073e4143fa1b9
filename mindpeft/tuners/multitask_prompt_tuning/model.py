"""The multitask prompt-tuning encoder: a shared prompt scaled elementwise by a low-rank matrix per task."""
import os

import numpy as np
from mindspore import Parameter, Tensor, ops

from ...models.modeling_utils import assign, load_safetensors
from ...utils.constants import SAFETENSORS_WEIGHTS_NAME
from ..prompt_tuning import PromptEmbedding
from .config import SOURCE_INITS, MultitaskPromptTuningInit


def load_source_state_dict(path):
    """``{key: array}`` of a source adapter: its ``adapter_model.safetensors``, or a folder holding one."""
    file = os.path.join(path, SAFETENSORS_WEIGHTS_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ValueError(f"prompt_tuning_init_state_dict_path {path!r}: no such file")
    if not file.endswith(".safetensors"):
        raise ValueError(f"prompt_tuning_init_state_dict_path {path!r}: mindpeft reads .safetensors files only "
                         "(HF peft's adapter_model.safetensors); re-save a PyTorch pickle with "
                         "safe_serialization=True")
    return load_safetensors(file)


class MultitaskPromptEmbedding(PromptEmbedding):
    """``embedding`` (virtual tokens, token_dim) as in prompt tuning, times ``prefix_task_cols[t] @
    prefix_task_rows[t]`` for task ``t``: ``prefix_task_cols`` (num_tasks, virtual tokens, num_ranks) and
    ``prefix_task_rows`` (num_tasks, num_ranks, token_dim), drawn from N(0, 0.02) as in HF peft.

    The checkpoint holds ``prompt_embeddings`` (the shared prompt), ``prefix_task_cols`` and ``prefix_task_rows``.
    """

    def __init__(self, config, word_embeddings, encoded=False):
        super().__init__(config, word_embeddings, encoded)
        total = config.num_virtual_tokens * config.num_transformer_submodules
        cols = np.random.normal(0, 0.02, (config.num_tasks, total, config.num_ranks))
        rows = np.random.normal(0, 0.02, (config.num_tasks, config.num_ranks, config.token_dim))
        self.prefix_task_cols = Parameter(Tensor(cols.astype(np.float32)))
        self.prefix_task_rows = Parameter(Tensor(rows.astype(np.float32)))
        if config.prompt_tuning_init in SOURCE_INITS and not (config.inference_mode or encoded):
            self._init_from_source(config)

    def _init_from_source(self, config):
        init = config.prompt_tuning_init
        if config.prompt_tuning_init_state_dict_path is None:
            raise ValueError(f"prompt_tuning_init_state_dict_path needs to be specified with {init.value} init "
                             "method")
        source = load_source_state_dict(config.prompt_tuning_init_state_dict_path)
        needed = ["prompt_embeddings"] + (["prefix_task_cols", "prefix_task_rows"]
                                          if init != MultitaskPromptTuningInit.ONLY_SOURCE_SHARED else [])
        missing = [key for key in needed if key not in source]
        if missing:
            raise ValueError(f"prompt_tuning_init_state_dict_path {config.prompt_tuning_init_state_dict_path!r} "
                             f"lacks {missing}: it is not a multitask prompt-tuning adapter")
        values = {"prompt_embeddings": source["prompt_embeddings"]}
        if init == MultitaskPromptTuningInit.AVERAGE_SOURCE_TASKS:
            values.update((key, source[key].mean(0, keepdims=True)) for key in needed[1:])
        elif init == MultitaskPromptTuningInit.EXACT_SOURCE_TASK:
            task = config.prompt_tuning_init_task
            if task >= source["prefix_task_cols"].shape[0]:
                raise ValueError(f"prompt_tuning_init_task={task}, but the source adapter has "
                                 f"{source['prefix_task_cols'].shape[0]} tasks")
            values.update((key, source[key][task: task + 1]) for key in needed[1:])
        targets = {"prompt_embeddings": self.embedding.weight, "prefix_task_cols": self.prefix_task_cols,
                   "prefix_task_rows": self.prefix_task_rows}
        mismatched = [f"{key}: source {tuple(value.shape)}, model {tuple(targets[key].shape)}"
                      for key, value in values.items() if tuple(value.shape) != tuple(targets[key].shape)]
        if mismatched:
            hint = (f" ({init.value} gives the factors of one task: set num_tasks=1)"
                    if init != MultitaskPromptTuningInit.ONLY_SOURCE_SHARED and config.num_tasks != 1 else "")
            raise ValueError(f"The source adapter does not fit this config: {'; '.join(mismatched)}{hint}")
        for key, value in values.items():
            assign(targets[key], value.astype(np.float32), key)

    def extra_checkpoint_parameters(self):
        """``{checkpoint key: Parameter}`` saved besides ``prompt_embeddings``."""
        return {"prefix_task_cols": self.prefix_task_cols, "prefix_task_rows": self.prefix_task_rows}

    def construct(self, indices, task_ids=None):
        if task_ids is None:
            raise ValueError("task_ids cannot be None")
        num_tasks = self.prefix_task_cols.shape[0]
        if (task_ids >= num_tasks).any() or (task_ids < 0).any():
            raise ValueError(f"Only {num_tasks} tasks available. Found task ids from {task_ids.min()} to "
                             f"{task_ids.max()}")
        task_prompts = ops.matmul(ops.gather(self.prefix_task_cols, task_ids, 0),
                                  ops.gather(self.prefix_task_rows, task_ids, 0))
        return self.embedding(indices) * task_prompts

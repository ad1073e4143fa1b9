"""Configuration of multitask prompt tuning (Wang et al., 2023), as HF peft's."""
import enum
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import check_integer, check_string
from ...utils.peft_types import PeftType
from ..prompt_tuning import PromptTuningConfig, PromptTuningInit


class MultitaskPromptTuningInit(str, enum.Enum):
    TEXT = "TEXT"  # the word embeddings of prompt_tuning_init_text
    RANDOM = "RANDOM"
    AVERAGE_SOURCE_TASKS = "AVERAGE_SOURCE_TASKS"  # source prompt, task factors averaged over the source tasks
    EXACT_SOURCE_TASK = "EXACT_SOURCE_TASK"  # source prompt, task factors of source task prompt_tuning_init_task
    ONLY_SOURCE_SHARED = "ONLY_SOURCE_SHARED"  # source prompt only


SOURCE_INITS = (MultitaskPromptTuningInit.AVERAGE_SOURCE_TASKS, MultitaskPromptTuningInit.EXACT_SOURCE_TASK,
                MultitaskPromptTuningInit.ONLY_SOURCE_SHARED)


@dataclass
class MultitaskPromptTuningConfig(PromptTuningConfig):
    """A shared soft prompt times a per-task rank-``num_ranks`` matrix; ``task_ids`` picks the task of each sample.

    A target task usually starts from a source checkpoint (``prompt_tuning_init_state_dict_path``, the
    ``adapter_model.safetensors`` of a multitask prompt-tuning adapter, or its folder) with ``num_tasks=1``.
    """

    prompt_tuning_init: Union[MultitaskPromptTuningInit, str] = field(
        default=MultitaskPromptTuningInit.RANDOM,
        metadata={"help": "TEXT, RANDOM, AVERAGE_SOURCE_TASKS, EXACT_SOURCE_TASK or ONLY_SOURCE_SHARED"})
    prompt_tuning_init_state_dict_path: Optional[str] = field(
        default=None, metadata={"help": "The source adapter's adapter_model.safetensors (or its folder), for the "
                                        "*SOURCE* initialisations"})
    prompt_tuning_init_task: Optional[int] = field(default=0, metadata={"help": "Source task for EXACT_SOURCE_TASK"})
    num_ranks: Optional[int] = field(default=1, metadata={"help": "Rank of each task's prompt update"})
    num_tasks: Optional[int] = field(default=1, metadata={"help": "Number of tasks"})

    def __post_init__(self):
        valid = [i.value for i in MultitaskPromptTuningInit]
        if self.prompt_tuning_init not in valid:
            raise ValueError(f"prompt_tuning_init must be one of {valid}, got {self.prompt_tuning_init!r}")
        init = MultitaskPromptTuningInit(self.prompt_tuning_init)
        # PromptTuningConfig checks the rest (TEXT needs a text and a tokenizer); it knows TEXT and RANDOM only.
        self.prompt_tuning_init = PromptTuningInit.TEXT if init == MultitaskPromptTuningInit.TEXT \
            else PromptTuningInit.RANDOM
        super().__post_init__()
        self.prompt_tuning_init = init
        self.peft_type = PeftType.MULTITASK_PROMPT_TUNING
        check_string(self, "prompt_tuning_init_state_dict_path")
        check_integer(self, "prompt_tuning_init_task", minimum=0)
        check_integer(self, "num_ranks", minimum=1)
        check_integer(self, "num_tasks", minimum=1)

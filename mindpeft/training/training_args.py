"""``TrainingArguments`` and ``Seq2SeqTrainingArguments``: transformers' names and defaults for what the
``Trainer`` does, each checked when set (the message names the field and its value)."""
import dataclasses
import importlib.util
import json
import math
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import List, Optional, Union

from .schedules import SCHEDULES

STRATEGIES = ("no", "steps", "epoch")
REPORTERS = ("tensorboard",)
REPORTER_MODULES = {"tensorboard": "tensorboardX"}


def _fail(name, value, expected):
    raise ValueError(f"TrainingArguments.{name} must be {expected}, got {value!r}")


def _integer(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(name, value, f"an integer >= {low}")


def _number(name, value, low, high=None, low_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        _fail(name, value, f"a number {bound}" + (f" and <= {high}" if high is not None else ""))


def _interval(name, value):
    """A step count: an integer >= 1, or a share (0, 1) of the total steps."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (value > 1 and value != int(value)):
        _fail(name, value, "an integer >= 1, or a float in (0, 1) for a share of the training steps")


@dataclass
class TrainingArguments:
    """What to train for how long, when to evaluate, log and save. Names and defaults follow transformers'
    ``TrainingArguments``; ``jit`` (compile the step with ``mindspore.jit``) is mindpeft's own.

    ``evaluation_strategy`` is the older name of ``eval_strategy`` and still accepted. ``logging_steps``,
    ``eval_steps`` and ``save_steps`` below 1 are shares of the total optimizer steps. ``warmup_steps`` below 1 is
    a share of them too (as transformers 5); ``warmup_ratio`` is the older way to say it.
    """

    output_dir: Optional[str] = None
    overwrite_output_dir: bool = False
    do_train: bool = False
    do_eval: bool = False
    do_predict: bool = False
    eval_strategy: str = "no"
    prediction_loss_only: bool = False
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    num_train_epochs: float = 3.0
    max_steps: int = -1
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: float = 0
    logging_dir: Optional[str] = None
    logging_strategy: str = "steps"
    logging_first_step: bool = False
    logging_steps: float = 500
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: Optional[int] = None
    save_only_model: bool = False
    seed: int = 42
    data_seed: Optional[int] = None
    eval_steps: Optional[float] = None
    eval_on_start: bool = False
    dataloader_drop_last: bool = False
    run_name: Optional[str] = None
    disable_tqdm: Optional[bool] = None
    remove_unused_columns: bool = True
    label_names: Optional[List[str]] = None
    load_best_model_at_end: bool = False
    metric_for_best_model: Optional[str] = None
    greater_is_better: Optional[bool] = None
    report_to: Union[None, str, List[str]] = "none"
    resume_from_checkpoint: Optional[str] = None
    fp16: bool = False  # a float16 model (ms_dtype=mindspore.float16) trained with dynamic loss scaling
    bf16: bool = False
    push_to_hub: bool = False
    jit: bool = True
    evaluation_strategy: Optional[str] = field(default=None, repr=False)

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = "trainer_output"
        self.output_dir = os.fspath(self.output_dir)
        if self.evaluation_strategy is not None:
            self.eval_strategy, self.evaluation_strategy = self.evaluation_strategy, None
        for name in ("eval_strategy", "save_strategy", "logging_strategy"):
            value = getattr(self, name)
            value = getattr(value, "value", value)
            if value not in STRATEGIES:
                _fail(name, value, f"one of {list(STRATEGIES)}")
            setattr(self, name, value)
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            _integer(name, getattr(self, name), 1)
        _integer("seed", self.seed, 0)
        if self.data_seed is not None:
            _integer("data_seed", self.data_seed, 0)
        _number("learning_rate", self.learning_rate, 0, low_open=True)
        _number("weight_decay", self.weight_decay, 0)
        _number("max_grad_norm", self.max_grad_norm if self.max_grad_norm is not None else 0, 0)
        _number("adam_beta1", self.adam_beta1, 0, 1)
        _number("adam_beta2", self.adam_beta2, 0, 1)
        _number("adam_epsilon", self.adam_epsilon, 0)
        _number("num_train_epochs", self.num_train_epochs, 0)
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps == 0 \
                or self.max_steps < -1:
            _fail("max_steps", self.max_steps, "a positive integer, or -1 to train num_train_epochs")
        if self.max_steps < 0 and self.num_train_epochs <= 0:
            _fail("num_train_epochs", self.num_train_epochs, "> 0 when max_steps is -1")
        _number("warmup_ratio", self.warmup_ratio, 0, 1)
        _number("warmup_steps", self.warmup_steps, 0)
        if 0 < self.warmup_steps < 1 and self.warmup_ratio:
            _fail("warmup_steps", self.warmup_steps, "an integer step count when warmup_ratio is also set")
        if self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps):
            _fail("warmup_steps", self.warmup_steps, "an integer, or a float in (0, 1) for a share of the steps")
        name = getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)
        if name not in SCHEDULES:
            _fail("lr_scheduler_type", name, f"one of {sorted(SCHEDULES)}")
        self.lr_scheduler_type = name
        for name in ("logging_steps", "save_steps"):
            _interval(name, getattr(self, name))
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps
        if self.eval_steps is not None:
            _interval("eval_steps", self.eval_steps)
        if self.save_total_limit is not None:
            _integer("save_total_limit", self.save_total_limit, 0)
            if self.save_total_limit == 0:
                self.save_total_limit = None
        if self.load_best_model_at_end:
            if self.eval_strategy == "no" or self.eval_strategy != self.save_strategy:
                raise ValueError("TrainingArguments.load_best_model_at_end requires the save and eval strategy to "
                                 f"match (and not be 'no'), but found eval_strategy={self.eval_strategy!r} and "
                                 f"save_strategy={self.save_strategy!r}")
            if self.eval_strategy == "steps" and self.eval_steps >= 1 and self.save_steps >= 1 \
                    and self.save_steps % self.eval_steps:
                raise ValueError("TrainingArguments.load_best_model_at_end requires save_steps to be a multiple of "
                                 f"eval_steps, but found save_steps={self.save_steps!r} and "
                                 f"eval_steps={self.eval_steps!r}")
            if self.metric_for_best_model is None:
                self.metric_for_best_model = "loss"
        if self.metric_for_best_model is not None and self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        self.report_to = self._reporters(self.report_to)
        if self.bf16:
            _fail("bf16", True, "False: mindpeft's Trainer trains in the model's own dtype; load the model with "
                                "ms_dtype=mindspore.bfloat16 (where the device has bfloat16 kernels)")
        if self.push_to_hub:
            _fail("push_to_hub", True, "False: mindpeft reaches no hub; save with trainer.save_model()")
        if self.logging_dir is None:
            stamp = datetime.now().strftime("%b%d_%H-%M-%S")
            self.logging_dir = os.path.join(self.output_dir, "runs", f"{stamp}_{socket.gethostname()}")
        if self.run_name is None:
            self.run_name = self.output_dir
        if self.label_names is not None and not isinstance(self.label_names, (list, tuple)):
            _fail("label_names", self.label_names, "a list of column names")

    @staticmethod
    def _reporters(value):
        if value is None or value == "none" or value == ["none"]:
            return []
        names = [value] if isinstance(value, str) else list(value)
        if "all" in names:  # the installed ones
            return [n for n in REPORTERS if importlib.util.find_spec(REPORTER_MODULES[n]) is not None]
        unknown = [n for n in names if n not in REPORTERS]
        if unknown:
            _fail("report_to", value, f"'none', 'all' or a list from {list(REPORTERS)}")
        return names

    def steps_for(self, value, max_steps):
        """A ``*_steps`` value as a step count (a share below 1 is of ``max_steps``, at least 1)."""
        return max(1, math.ceil(value * max_steps)) if value < 1 else int(value)

    def warmup_for(self, max_steps):
        """The number of warm-up steps for a run of ``max_steps`` optimizer steps."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        ratio = self.warmup_steps if self.warmup_steps > 0 else self.warmup_ratio
        return math.ceil(ratio * max_steps)

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "evaluation_strategy"}

    def to_json_string(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclass
class Seq2SeqTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus generation in evaluation: with ``predict_with_generate`` the predictions given
    to ``compute_metrics`` are generated token ids (greedy, ``generation_max_length`` tokens at most)."""

    predict_with_generate: bool = False
    generation_max_length: Optional[int] = None
    generation_num_beams: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        if self.generation_max_length is not None:
            _integer("generation_max_length", self.generation_max_length, 1)
        if self.generation_num_beams not in (None, 1):
            _fail("generation_num_beams", self.generation_num_beams, "1 or None: mindpeft generates greedily")

"""``Trainer`` and ``Seq2SeqTrainer``: transformers' training loop for MindSpore models and PeftModels.

The step is a :class:`~mindpeft.training.trainer_step.TrainerStep` compiled with ``mindspore.jit`` (gradient
accumulation, data-parallel averaging and clipping inside the graph) with mindpeft's fused AdamW
(:class:`mindpeft.optimizers.AdamW`, torch's update). Checkpoints go to ``output_dir/checkpoint-<step>/``: the adapter
(``adapter_config.json`` + ``adapter_model.safetensors``), ``optimizer.ckpt`` (moments, step and trainable
weights), ``scheduler.json``, ``trainer_state.json`` (transformers' layout, ``log_history`` included),
``rng_state.json`` (one per rank), ``training_args.json`` and ``checksums.json``. Each is written into a temporary
folder renamed into place when complete, rotated by ``save_total_limit`` (never the best one), and
``resume_from_checkpoint`` continues exactly where it stopped: the rows of each epoch come in an order drawn from
``(data_seed, epoch)`` and dropout is reseeded at every checkpoint position.

Started by ``msrun --worker_num=N ...``, the same script trains data-parallel: every dataset is sharded by rank,
gradients and losses are averaged across ranks, evaluation predictions are gathered, and only rank 0 writes files,
logs and progress bars. ``N`` workers with ``per_device_train_batch_size=B`` train as one process with ``N * B``
(exactly so when every batch holds as many loss tokens: each rank's loss is a mean over its own batch).
"""
import collections
import dataclasses
import inspect
import logging
import math
import os
import time
from collections.abc import Mapping

import numpy as np
import mindspore as ms
import mindspore.dataset as ds

from ..models.modeling_utils import write_parameter
from ..optimizers.adamw import AdamW
from ..utils.io import atomic_directory, read_json_object, write_json
from ..utils.seeding import reseed_dropout, set_seed
from .callbacks import (CallbackHandler, DefaultFlowCallback, PrinterCallback, ProgressCallback, TensorBoardCallback,
                        TrainerControl, TrainerState, exportable_states)
from .checkpoint import (CHECKPOINT_PREFIX, CheckpointError, adalora_arrays, discard, folder_checksums,
                         list_checkpoints, remove_stale, restore_adalora, rng_state, set_rng_state, verify_checksums)
from .data_collator import DataCollatorWithPadding, default_data_collator
from .distributed import init_distributed, shard_positions, unshard
from .schedules import get_scheduler
from .train_step import ForwardStep
from .trainer_step import TrainerStep
from .training_args import TrainingArguments
from .value_checks import LABEL_COLUMNS, check_rows, value_limits

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.ckpt"
SCHEDULER_FILE = "scheduler.json"
ARGS_FILE = "training_args.json"
CHECKSUM_FILE = "checksums.json"
ADALORA_FILE = "adalora_state.npz"
ADALORA_PATTERN_FILE = "adalora_rank_pattern.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
LABEL_PAD = -100

TrainOutput = collections.namedtuple("TrainOutput", ["global_step", "training_loss", "metrics"])
PredictionOutput = collections.namedtuple("PredictionOutput", ["predictions", "label_ids", "metrics"])
EvalLoopOutput = collections.namedtuple("EvalLoopOutput", ["predictions", "label_ids", "metrics", "num_samples"])


def rng_file(rank):
    return "rng_state.json" if rank == 0 else f"rng_state_{rank}.json"


def check_checkpoint(path):
    """The :class:`TrainerState` of the checkpoint folder ``path``, after checking that it holds every file a resume
    needs and that each file matches ``checksums.json``; raises :class:`CheckpointError` otherwise."""
    for name in (STATE_FILE, CHECKSUM_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, rng_file(0)):
        if not os.path.isfile(os.path.join(path, name)):
            raise CheckpointError(f"{name} is missing" + (" (saved with save_only_model=True?)"
                                                          if name == OPTIMIZER_FILE else ""))
    try:
        recorded = read_json_object(os.path.join(path, CHECKSUM_FILE))
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    verify_checksums(path, recorded, CHECKSUM_FILE)
    for name in (STATE_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, rng_file(0)):
        if name not in recorded:
            raise CheckpointError(f"{CHECKSUM_FILE} does not list {name}")
    state = TrainerState.load_from_json(os.path.join(path, STATE_FILE))
    if os.path.basename(os.path.normpath(path)) != f"{CHECKPOINT_PREFIX}-{state.global_step}":
        raise CheckpointError(f"{STATE_FILE} says step {state.global_step}, which does not match the folder name")
    return state


def newest_checkpoint(output_dir):
    """``(path, TrainerState)`` of the newest checkpoint in ``output_dir`` that passes :func:`check_checkpoint`;
    a damaged newer one is skipped with a warning (a resumed run overwrites it when it gets there). ``None`` when
    ``output_dir`` holds no checkpoint; ``ValueError`` when every one is damaged."""
    damaged = []
    for _, path in list_checkpoints(output_dir):
        try:
            return path, check_checkpoint(path)
        except CheckpointError as err:
            logger.warning("Checkpoint %s is damaged (%s); trying the previous one", path, err)
            damaged.append(f"{os.path.basename(path)}: {err}")
    if damaged:
        raise ValueError(f"No valid checkpoint found in output directory ({output_dir}): every checkpoint is "
                         f"damaged ({'; '.join(damaged)}). Move them away to start over")
    return None


class EvalPrediction:
    """What ``compute_metrics`` gets: ``predictions`` and ``label_ids`` (numpy), unpackable as a pair."""

    def __init__(self, predictions, label_ids):
        self.predictions = predictions
        self.label_ids = label_ids

    def __iter__(self):
        return iter((self.predictions, self.label_ids))

    def __getitem__(self, index):
        return (self.predictions, self.label_ids)[index]

    def __len__(self):
        return 2


@dataclasses.dataclass
class BestRun:
    """The best trial of :meth:`Trainer.hyperparameter_search`; ``params`` is ``hyperparameters`` (Optuna's
    name)."""

    run_id: str
    objective: float
    hyperparameters: dict
    run_summary: object = None

    @property
    def params(self):
        return self.hyperparameters


def default_compute_objective(metrics):
    """The evaluation loss when it is the only metric, else the sum of the other metrics (transformers' rule)."""
    metrics = dict(metrics)
    loss = metrics.pop("eval_loss", None)
    metrics.pop("epoch", None)
    metrics = {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second"))}
    return loss if not metrics else sum(metrics.values())


def default_hp_space_optuna(trial):
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-6, 1e-4, log=True),
            "num_train_epochs": trial.suggest_int("num_train_epochs", 1, 5),
            "seed": trial.suggest_int("seed", 1, 40),
            "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size",
                                                                     [4, 8, 16, 32, 64])}


def speed_metrics(split, start, num_samples, num_steps):
    runtime = max(time.time() - start, 1e-9)
    return {f"{split}_runtime": round(runtime, 4), f"{split}_samples_per_second": round(num_samples / runtime, 3),
            f"{split}_steps_per_second": round(num_steps / runtime, 3)}


# ----- datasets -------------------------------------------------------------------------------------------------
def _is_batched(pipeline):
    return isinstance(pipeline, ds.BatchDataset) or any(_is_batched(c) for c in pipeline.children)


def dataset_rows(dataset, what):
    """A dataset as a list of row dicts: a list of dicts, a dict of columns (HF style), anything with ``len`` and
    ``[i]`` giving dicts (HF ``datasets``, ``mindpeft.dataset``), or a ``mindspore.dataset`` pipeline (read once;
    a batched one is split back into rows)."""
    if isinstance(dataset, ds.Dataset):
        rows = []
        batched = _is_batched(dataset)
        for item in dataset.create_dict_iterator(num_epochs=1, output_numpy=True):
            if batched:
                count = len(next(iter(item.values())))
                rows.extend({k: v[i] for k, v in item.items()} for i in range(count))
            else:
                rows.append(item)
        return rows
    if isinstance(dataset, Mapping):
        lengths = {k: len(v) for k, v in dataset.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"The {what} columns have different lengths: {lengths}")
        return [dict(zip(dataset, values)) for values in zip(*dataset.values())]
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        rows = [dataset[i] for i in range(len(dataset))]
        if rows and not isinstance(rows[0], Mapping):
            raise TypeError(f"The {what} must give a dict per row; its first row is a {type(rows[0]).__name__}")
        return [dict(r) for r in rows]
    raise TypeError(f"The {what} must be a list of dicts, a dict of columns, a dataset with len() and [i], or a "
                    f"mindspore.dataset pipeline; got {type(dataset).__name__}")


def is_dataset_dict(dataset):
    """Whether ``dataset`` is ``{name: dataset}`` (rather than a dict of columns)."""
    def is_dataset(value):
        return isinstance(value, (ds.Dataset, Mapping)) or (
            hasattr(value, "__getitem__") and hasattr(value, "__len__") and len(value) > 0
            and isinstance(value[0], Mapping))

    return isinstance(dataset, Mapping) and bool(dataset) and all(is_dataset(v) for v in dataset.values())


def to_tensors(batch):
    """A collated batch as ``mindspore.Tensor``s (integers int32, floats float32); text columns are refused."""
    tensors = {}
    for key, value in batch.items():
        if isinstance(value, ms.Tensor):
            tensors[key] = value
            continue
        array = np.asarray(value)
        if array.dtype.kind in "USO":
            raise TypeError(f"Batch column {key!r} holds text or objects, which the model cannot take: tokenize it "
                            "first, or keep remove_unused_columns=True to drop columns the model does not name")
        if array.dtype.kind in "iu":
            array = array.astype(np.int32)
        elif array.dtype.kind == "f":
            array = array.astype(np.float32)
        tensors[key] = ms.Tensor(array)
    return tensors


def _pad_to_common_shape(arrays, first_axis):
    """Pad arrays with -100 to the largest size of each axis from ``first_axis`` on."""
    arrays = [np.asarray(a) for a in arrays]
    if all(a.shape[first_axis:] == arrays[0].shape[first_axis:] for a in arrays):
        return arrays
    shape = np.max([a.shape[first_axis:] for a in arrays], axis=0)
    padded = []
    for a in arrays:
        out = np.full((*a.shape[:first_axis], *shape), LABEL_PAD, dtype=np.result_type(a.dtype, np.int32))
        out[tuple(slice(0, n) for n in a.shape)] = a
        padded.append(out)
    return padded


def _pad_concat(arrays):
    """Per-batch arrays joined on axis 0 (other axes padded with -100, as transformers does)."""
    return np.concatenate(_pad_to_common_shape(arrays, 1), axis=0)


def _active_adapter(model):
    """The adapter a PeftModel trains, or the first active one of a model holding adapters (transformers'
    integration, :meth:`mindpeft.models.PreTrainedModel.add_adapter`); ``None`` without adapters."""
    if hasattr(model, "active_adapter"):
        return model.active_adapter
    if getattr(model, "_hf_peft_config_loaded", False):
        return model.active_adapters()[0]
    return None


def base_model(model):
    """The transformer under a PeftModel (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _nested(values, fn):
    if values and isinstance(values[0], tuple):
        return tuple(fn([v[i] for v in values]) for i in range(len(values[0])))
    return fn(values)


class Trainer:
    """Train, evaluate and predict with a (Peft) model, as transformers' ``Trainer``.

    Args:
        model: the model to train (its ``trainable_params()`` are trained), or ``None`` with ``model_init``.
        args: :class:`TrainingArguments` (default: ``output_dir="trainer_output"``).
        data_collator: rows -> batch of arrays; default ``DataCollatorWithPadding(processing_class)`` when a
            tokenizer is given, else :func:`default_data_collator`.
        train_dataset, eval_dataset: see :func:`dataset_rows`; ``eval_dataset`` may be a dict of them.
        processing_class: the tokenizer (``tokenizer`` is the older name); saved with the model.
        model_init: ``() -> model`` or ``(trial) -> model``, called at each ``train()`` (needed for
            ``hyperparameter_search``).
        compute_metrics: ``EvalPrediction -> dict`` of metrics.
        callbacks: :class:`TrainerCallback` instances or classes, added to the defaults.
        optimizers: ``(optimizer, lr_scheduler)``; defaults: AdamW over the trainable parameters (no weight decay
            on biases and norms) and ``lr_scheduler_type``'s schedule.
        preprocess_logits_for_metrics: ``(logits, labels) -> logits`` per evaluation batch (numpy).
    """

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, model_init=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), preprocess_logits_for_metrics=None, tokenizer=None):
        self.args = args if args is not None else TrainingArguments(output_dir="trainer_output")
        if not isinstance(self.args, TrainingArguments):
            raise TypeError(f"args must be a mindpeft TrainingArguments, got {type(self.args).__name__}")
        self.distributed = init_distributed()
        set_seed(self.args.seed)
        self.model_init = model_init
        if model is None:
            if model_init is None:
                raise RuntimeError("Trainer requires either a model or a model_init function")
            model = self._call_model_init()
        self.model = model
        self.processing_class = processing_class if processing_class is not None else tokenizer
        if data_collator is None:
            data_collator = (DataCollatorWithPadding(self.processing_class)
                             if hasattr(self.processing_class, "pad") else default_data_collator)
        self.data_collator = data_collator
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer, self.lr_scheduler = optimizers
        if self.model_init is not None and self.optimizer is not None:
            raise RuntimeError("Passing optimizers is not allowed with model_init: each train() builds a new model, "
                               "which a given optimizer does not hold")
        defaults = [DefaultFlowCallback]
        if "tensorboard" in self.args.report_to:
            defaults.append(TensorBoardCallback)
        defaults.append(PrinterCallback if self.args.disable_tqdm else ProgressCallback)
        self.callback_handler = CallbackHandler(defaults + list(callbacks or []), self.model, self.processing_class,
                                                self.optimizer, self.lr_scheduler)
        self.state = self._new_state()
        self.control = TrainerControl()
        self._forward_steps = {}
        self._trial = None
        self._objective = None
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)

    # ----- small helpers --------------------------------------------------------------------------------------
    def _new_state(self):
        return TrainerState(is_local_process_zero=self.distributed.is_main,
                            is_world_process_zero=self.distributed.is_main)

    def is_world_process_zero(self):
        return self.distributed.is_main

    def _call_model_init(self, trial=None):
        parameters = inspect.signature(self.model_init).parameters
        model = self.model_init(trial) if len(parameters) == 1 else self.model_init()
        if model is None:
            raise RuntimeError("model_init should not return None")
        return model

    def add_callback(self, callback):
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback):
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback):
        self.callback_handler.remove_callback(callback)

    def _label_names(self):
        return list(self.args.label_names) if self.args.label_names else ["labels"]

    def _model_columns(self):
        """Row keys the model takes (``None``: it takes any)."""
        parameters = inspect.signature(base_model(self.model).construct).parameters
        if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            return None
        return set(parameters) | {"label", "label_ids", "labels"} | set(self._label_names())

    def _rows(self, dataset, what):
        rows = dataset_rows(dataset, what)
        if not rows:
            raise ValueError(f"The {what} is empty")
        columns = self._model_columns() if self.args.remove_unused_columns else None
        if columns is not None:
            unused = sorted(set(rows[0]) - columns)
            if unused:
                logger.info("The following columns in the %s have no argument in %s.construct and have been "
                            "ignored: %s", what, type(base_model(self.model)).__name__, ", ".join(unused))
                rows = [{k: v for k, v in row.items() if k in columns} for row in rows]
        check_rows(rows, value_limits(self.model, LABEL_COLUMNS + tuple(self._label_names())), what)
        return rows

    def _collate(self, rows, positions):
        return to_tensors(self.data_collator([rows[i] for i in positions]))

    def _learning_rate(self):
        return float(self.lr_scheduler.get_last_lr()[0]) if self.lr_scheduler is not None else \
            float(self.args.learning_rate)

    def _adalora(self):
        config = getattr(self.model, "peft_config", {}).get(_active_adapter(self.model))
        return getattr(getattr(config, "peft_type", None), "value", None) == "ADALORA"

    # ----- optimizer and schedule -----------------------------------------------------------------------------
    def create_optimizer(self):
        """AdamW over the trainable parameters; ``weight_decay`` spares biases and normalisation weights."""
        if self.optimizer is None:
            params = self.model.trainable_params()
            if not params:
                raise ValueError("The model has no trainable parameters: nothing to train")
            args = self.args
            kwargs = dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
            no_decay = [p for p in params if "bias" in p.name or "norm" in p.name.lower() or ".ln_" in p.name]
            decay = [p for p in params if all(p is not q for q in no_decay)]
            if args.weight_decay and no_decay and decay:
                groups = [{"params": decay, "weight_decay": args.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}]
                self.optimizer = AdamW(groups, **kwargs)
            else:
                self.optimizer = AdamW(params, weight_decay=args.weight_decay if decay else 0.0, **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = get_scheduler(self.args.lr_scheduler_type, optimizer or self.optimizer,
                                              self.args.warmup_for(num_training_steps), num_training_steps)
        return self.lr_scheduler

    def create_optimizer_and_scheduler(self, num_training_steps):
        self.create_optimizer()
        self.create_scheduler(num_training_steps)

    # ----- training -------------------------------------------------------------------------------------------
    def _epoch_updates(self, rows, epoch):
        """This rank's micro-batches of ``epoch``, grouped per optimizer step (lists of row positions)."""
        args = self.args
        seed = args.seed if args.data_seed is None else args.data_seed
        order = np.random.default_rng([seed, epoch]).permutation(len(rows))
        mine = order[shard_positions(len(rows), self.distributed.rank, self.distributed.world_size)]
        size = args.per_device_train_batch_size
        batches = [mine[i:i + size] for i in range(0, len(mine), size)]
        if args.dataloader_drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        accumulate = args.gradient_accumulation_steps
        return [batches[i:i + accumulate] for i in range(0, len(batches), accumulate)]

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """Train; ``resume_from_checkpoint``: ``True`` (the newest valid checkpoint in ``output_dir``) or a
        checkpoint folder (default: ``args.resume_from_checkpoint``). Returns :class:`TrainOutput`."""
        if kwargs:
            raise TypeError(f"train() got unexpected keyword arguments {sorted(kwargs)}")
        args = self.args
        if resume_from_checkpoint is None:
            resume_from_checkpoint = args.resume_from_checkpoint
        if resume_from_checkpoint is False:
            resume_from_checkpoint = None
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset")
        self._trial = trial
        if self.model_init is not None:
            set_seed(args.seed)
            self.model = self._call_model_init(trial)
            self.optimizer = self.lr_scheduler = None
            self._forward_steps = {}
        rows = self._rows(self.train_dataset, "training set")
        steps_per_epoch = len(self._epoch_updates(rows, 0))
        if steps_per_epoch == 0:
            raise ValueError(f"The training set has {len(rows)} rows: fewer than one batch of "
                             f"per_device_train_batch_size={args.per_device_train_batch_size} with "
                             "dataloader_drop_last=True")
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        num_epochs = math.ceil(max_steps / steps_per_epoch)
        self.create_optimizer_and_scheduler(max_steps)
        self.callback_handler.model, self.callback_handler.optimizer = self.model, self.optimizer
        self.callback_handler.lr_scheduler = self.lr_scheduler

        self.state = self._new_state()
        self.state.is_hyper_param_search = trial is not None
        if trial is not None:
            self.state.trial_name, self.state.trial_params = f"run-{trial.number}", dict(trial.params)
        self.state.max_steps, self.state.num_train_epochs = max_steps, num_epochs
        self.state.train_batch_size = args.per_device_train_batch_size
        self.state.logging_steps = args.steps_for(args.logging_steps, max_steps)
        self.state.eval_steps = args.steps_for(args.eval_steps or args.logging_steps, max_steps)
        self.state.save_steps = args.steps_for(args.save_steps, max_steps)
        if self.distributed.is_main:
            os.makedirs(args.output_dir, exist_ok=True)
            remove_stale(args.output_dir)
        if resume_from_checkpoint is not None:
            self._load_checkpoint(self._resume_path(resume_from_checkpoint))

        adalora = self._adalora()
        step = TrainerStep(self.model, self.optimizer, gradient_accumulation_steps=args.gradient_accumulation_steps,
                           max_grad_norm=args.max_grad_norm, world_size=self.distributed.world_size,
                           return_grads=adalora, jit=args.jit, loss_scale=self._loss_scale())
        self._step = step
        self._reseed(self.state.global_step)
        self.model.set_train(True)
        self.control = TrainerControl(should_training_stop=self.state.global_step >= max_steps)
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        if args.eval_on_start and self.state.global_step == 0:
            self._evaluate_in_training()
        start, start_step = time.time(), self.state.global_step
        sums = self.state.loss_sums
        first_epoch, skip = divmod(self.state.global_step, steps_per_epoch)
        for epoch in range(first_epoch, num_epochs):
            if self.control.should_training_stop:
                break
            updates = self._epoch_updates(rows, epoch)
            self.control._new_epoch()
            self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
            for index, micro_batches in enumerate(updates):
                if index < skip:
                    continue
                self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
                for positions in micro_batches[:-1]:
                    step.accumulate(**self._collate(rows, positions))
                loss, grad_norm, grads = step.update(**self._collate(rows, micro_batches[-1]))
                self.lr_scheduler.step()
                loss = float(loss)
                if not math.isfinite(loss):
                    logger.warning("The training loss at step %d is %s", self.state.global_step + 1, loss)
                if adalora:
                    self.model.base_model.update_and_allocate(
                        self.state.global_step, {p.name: g for p, g in zip(self.optimizer.parameters, grads)})
                self.state.global_step += 1
                self.state.epoch = epoch + (index + 1) / len(updates)
                sums["total"] += loss
                sums["since_log"] += loss
                sums["steps_since_log"] += 1
                self.control = self.callback_handler.on_step_end(args, self.state, self.control)
                self._maybe_log_save_evaluate(None if grad_norm is None else float(grad_norm))
                if self.control.should_epoch_stop or self.control.should_training_stop:
                    break
            skip = 0
            self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
            self._maybe_log_save_evaluate(None)
        if args.load_best_model_at_end and self.state.best_model_checkpoint is not None:
            self.distributed.barrier()
            self._load_best_model()
        steps_done = self.state.global_step - start_step
        train_loss = sums["total"] / max(self.state.global_step, 1)
        metrics = speed_metrics("train", start, steps_done * args.per_device_train_batch_size *
                                args.gradient_accumulation_steps * self.distributed.world_size, steps_done)
        metrics.update(total_flos=self.state.total_flos, train_loss=train_loss)
        self.log(metrics)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        self.model.set_train(False)
        return TrainOutput(self.state.global_step, train_loss, metrics)

    def _loss_scale(self):
        """``fp16=True``: dynamic loss scaling of a float16 model's training (torch's ``GradScaler``)."""
        if not self.args.fp16:
            return None
        if not any(p.dtype == ms.float16 for p in self.model.get_parameters()):
            raise ValueError("TrainingArguments.fp16=True trains a float16 model with dynamic loss scaling, but the "
                             "model has no float16 weights: load it with ms_dtype=mindspore.float16")
        return "dynamic"

    def _reseed(self, global_step):
        """Reseed dropout for ``global_step`` (rank-specific) and recompile the step when any dropout exists."""
        seed = self.args.seed + self.distributed.rank * 2 ** 32
        if reseed_dropout(self.model, seed, global_step):
            self._step.recompile()

    def _maybe_log_save_evaluate(self, grad_norm):
        control, state, sums = self.control, self.state, self.state.loss_sums
        if control.should_log and sums["steps_since_log"]:
            logs = {"loss": sums["since_log"] / sums["steps_since_log"]}
            if grad_norm is not None:
                logs["grad_norm"] = grad_norm
            logs["learning_rate"] = self._learning_rate()
            sums["since_log"], sums["steps_since_log"] = 0.0, 0
            self.log(logs)
        control.should_log = False
        if control.should_evaluate:
            control.should_evaluate = False
            self._evaluate_in_training()
        if control.should_save:
            control.should_save = False
            self._save_checkpoint()
            self.control = self.callback_handler.on_save(self.args, state, self.control)
            self._reseed(state.global_step)

    def _evaluate_in_training(self):
        metrics = self.evaluate()
        self.model.set_train(True)
        self._update_best(metrics)
        if self._trial is not None:
            self._objective = self._compute_objective(metrics)
            self._trial.report(self._objective, self.state.global_step)
            if self._trial.should_prune():
                import optuna

                raise optuna.TrialPruned()
        return metrics

    def _update_best(self, metrics):
        name = self.args.metric_for_best_model
        if name is None:
            return
        key = name if name.startswith("eval_") else f"eval_{name}"
        if key not in metrics:
            raise KeyError(f"metric_for_best_model={name!r} is not among the evaluation metrics "
                           f"{sorted(metrics)}; set it to one of them (without or with the 'eval_' prefix)")
        value = float(metrics[key])
        best = self.state.best_metric
        if best is None or (value > best if self.args.greater_is_better else value < best):
            self.state.best_metric, self.state.best_global_step = value, self.state.global_step

    # ----- checkpoints ----------------------------------------------------------------------------------------
    def _save_checkpoint(self):
        args, state = self.args, self.state
        rng_states = self.distributed.all_gather_object(rng_state())
        path = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}-{state.global_step}")
        if state.best_global_step == state.global_step and args.metric_for_best_model is not None:
            state.best_model_checkpoint = path
        if not self.distributed.is_main:
            return
        if os.path.lexists(path):  # left by a run that went further from an earlier checkpoint
            discard(path)
        with atomic_directory(path) as staging:
            self._write_model(staging)
            if not args.save_only_model:
                ms.save_checkpoint(self.optimizer, os.path.join(staging, OPTIMIZER_FILE))
                write_json(os.path.join(staging, SCHEDULER_FILE),
                           {"last_epoch": int(self.lr_scheduler.last_epoch),
                            "last_lr": [float(lr) for lr in self.lr_scheduler.get_last_lr()],
                            "lr_scheduler_type": args.lr_scheduler_type})
                for rank, states in enumerate(rng_states):
                    write_json(os.path.join(staging, rng_file(rank)), states)
                if self._adalora():
                    np.savez(os.path.join(staging, ADALORA_FILE), **adalora_arrays(self.model))
                    pattern = self.model.peft_config[_active_adapter(self.model)].rank_pattern
                    write_json(os.path.join(staging, ADALORA_PATTERN_FILE),
                               {k: [bool(x) for x in v] for k, v in (pattern or {}).items()})
            state.stateful_callbacks = exportable_states(self.callback_handler.callbacks)
            state.save_to_json(os.path.join(staging, STATE_FILE))
            write_json(os.path.join(staging, CHECKSUM_FILE), folder_checksums(staging, skip=(CHECKSUM_FILE,)))
        self._rotate_checkpoints()

    def _write_model(self, folder):
        self.model.save_pretrained(folder)
        if hasattr(self.processing_class, "save_pretrained"):
            self.processing_class.save_pretrained(folder)
        write_json(os.path.join(folder, ARGS_FILE), self.args.to_dict())

    def _rotate_checkpoints(self):
        limit = self.args.save_total_limit
        if not limit:
            return
        found = [path for _, path in list_checkpoints(self.args.output_dir)]
        keep = found[:limit]
        best = self.state.best_model_checkpoint
        if best is not None and best in found and best not in keep:
            keep = found[:max(limit - 1, 1)] + [best]
        for path in found:
            if path not in keep:
                discard(path)

    def _resume_path(self, resume):
        """The checkpoint folder to resume from (``True``: the newest valid one in ``output_dir``)."""
        if resume is True:
            found = newest_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
            return found[0]
        path = os.fspath(resume)
        if not os.path.isdir(path):
            raise ValueError(f"Can't find a valid checkpoint at {path}")
        try:
            check_checkpoint(path)
        except CheckpointError as err:
            raise ValueError(f"Can't resume from {path}: {err}") from None
        return path

    def _load_checkpoint(self, path):
        saved = check_checkpoint(path)
        if saved.train_batch_size not in (None, self.args.per_device_train_batch_size):
            logger.warning("Resuming from a checkpoint trained with a batch size of %s, but the current batch size "
                           "is %s: the rows of the epochs will not be the same as in the original run",
                           saved.train_batch_size, self.args.per_device_train_batch_size)
        values = ms.load_checkpoint(os.path.join(path, OPTIMIZER_FILE))
        params = {param.name: param for _, param in self.optimizer.parameters_and_names()}
        missing = sorted(set(params) - set(values))
        if missing:
            raise ValueError(f"{path}/{OPTIMIZER_FILE} lacks {len(missing)} optimizer values, e.g. {missing[0]}: "
                             "was it saved for another model or adapter?")
        for name, param in params.items():
            if tuple(values[name].shape) != tuple(param.shape):
                raise ValueError(f"{path}/{OPTIMIZER_FILE} holds {name} with shape {tuple(values[name].shape)}, "
                                 f"the model has {tuple(param.shape)}")
        for name, param in params.items():
            _write(param, values[name])
        for _ in range(saved.global_step):
            self.lr_scheduler.step()
        own = os.path.join(path, rng_file(self.distributed.rank))
        set_rng_state(read_json_object(own if os.path.isfile(own) else os.path.join(path, rng_file(0))))
        if self._adalora():
            pattern = read_json_object(os.path.join(path, ADALORA_PATTERN_FILE))
            restore_adalora(self.model, os.path.join(path, ADALORA_FILE), pattern or None)
        for key in ("epoch", "global_step", "log_history", "best_metric", "best_global_step",
                    "best_model_checkpoint", "loss_sums", "total_flos", "num_input_tokens_seen", "stateful_callbacks"):
            setattr(self.state, key, getattr(saved, key))
        logger.info("Resuming from %s (step %d)", path, saved.global_step)

    def _load_best_model(self):
        path = self.state.best_model_checkpoint
        logger.info("Loading best model from %s (score: %s).", path, self.state.best_metric)
        if hasattr(self.model, "peft_config"):
            from ..utils.save_and_load import load_peft_weights, set_peft_model_state_dict

            set_peft_model_state_dict(self.model, load_peft_weights(path), adapter_name=_active_adapter(self.model))
            return
        values = ms.load_checkpoint(os.path.join(path, OPTIMIZER_FILE))
        for param in self.model.trainable_params():
            _write(param, values[param.name])

    # ----- logging and saving ---------------------------------------------------------------------------------
    def log(self, logs):
        """Add ``epoch`` and ``step`` to ``logs``, append them to ``state.log_history`` and pass them to the
        callbacks (progress bar, TensorBoard)."""
        logs = dict(logs)
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs=logs)

    def save_model(self, output_dir=None):
        """Save the model (the adapter of a PeftModel), the tokenizer and ``training_args.json`` (rank 0)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.distributed.is_main:
            self._write_model(output_dir)

    def save_state(self):
        """Write ``trainer_state.json`` to ``output_dir`` (rank 0)."""
        if self.distributed.is_main:
            os.makedirs(self.args.output_dir, exist_ok=True)
            self.state.save_to_json(os.path.join(self.args.output_dir, STATE_FILE))

    # ----- evaluation -----------------------------------------------------------------------------------------
    def _forward(self):
        if self.model not in self._forward_steps:
            self._forward_steps = {self.model: ForwardStep(self.model, jit=self.args.jit)}
        return self._forward_steps[self.model]

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        """Evaluate on ``eval_dataset`` (default: the Trainer's); returns metrics named ``<prefix>_<name>``
        (``eval_loss``, the ``compute_metrics`` results, runtime and speed) and logs them."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("Trainer: evaluation requires an eval_dataset")
        if is_dataset_dict(dataset):
            merged = {}
            for name, part in dataset.items():
                merged.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}", **gen_kwargs))
            return merged
        start = time.time()
        rows = self._rows(dataset, "evaluation set")
        output = self.evaluation_loop(rows, "Evaluation", ignore_keys, metric_key_prefix, **gen_kwargs)
        num_steps = math.ceil(output.num_samples / (self.args.per_device_eval_batch_size *
                                                    self.distributed.world_size))
        output.metrics.update(speed_metrics(metric_key_prefix, start, output.num_samples, num_steps))
        self.log(output.metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control,
                                                         metrics=output.metrics)
        return output.metrics

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix="test", **gen_kwargs):
        """Predictions (logits, or generated ids), labels and metrics (``test_*``) for ``test_dataset``."""
        start = time.time()
        rows = self._rows(test_dataset, "test set")
        output = self.evaluation_loop(rows, "Prediction", ignore_keys, metric_key_prefix, prediction=True,
                                      **gen_kwargs)
        num_steps = math.ceil(output.num_samples / (self.args.per_device_eval_batch_size *
                                                    self.distributed.world_size))
        output.metrics.update(speed_metrics(metric_key_prefix, start, output.num_samples, num_steps))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics=output.metrics)
        return PredictionOutput(output.predictions, output.label_ids, output.metrics)

    def evaluation_loop(self, rows, description, ignore_keys=None, metric_key_prefix="eval", prediction=False,
                        **gen_kwargs):
        """Run :meth:`prediction_step` over this rank's share of ``rows`` and gather every rank's results."""
        args, dist = self.args, self.distributed
        logger.info("***** Running %s: %d rows, batch size %d *****", description, len(rows),
                    args.per_device_eval_batch_size)
        loss_only = not prediction and (args.prediction_loss_only or self.compute_metrics is None)
        was_training = self.model.training
        self.model.set_train(False)
        mine = shard_positions(len(rows), dist.rank, dist.world_size)
        size = args.per_device_eval_batch_size
        batches = [mine[i:i + size] for i in range(0, len(mine), size)]
        losses, predictions, labels = [], [], []
        try:
            for positions in batches:
                batch = self._collate(rows, positions)
                loss, logits, label = self.prediction_step(self.model, batch, loss_only, ignore_keys, **gen_kwargs)
                if loss is not None:
                    losses.append(np.full(len(positions), float(loss), np.float64))
                if logits is not None:
                    if self.preprocess_logits_for_metrics is not None:
                        logits = self.preprocess_logits_for_metrics(logits, label)
                    predictions.append(logits)
                if label is not None:
                    labels.append(label)
                self.control = self.callback_handler.on_prediction_step(args, self.state, self.control,
                                                                        eval_dataloader=batches)
        finally:
            self.model.set_train(was_training)
        local = [_nested(x, _pad_concat) if x else None for x in (losses, predictions, labels)]
        gathered = dist.all_gather_object(local)
        merged = []
        for index in range(3):
            parts = [g[index] for g in gathered]
            if parts[0] is None:
                merged.append(None)
            elif isinstance(parts[0], tuple):
                merged.append(tuple(unshard(_pad_to_common_shape([p[i] for p in parts], 0), len(rows))
                                    for i in range(len(parts[0]))))
            else:
                merged.append(unshard(_pad_to_common_shape(parts, 0), len(rows)))
        all_losses, all_predictions, all_labels = merged
        metrics = {}
        if self.compute_metrics is not None and all_predictions is not None and all_labels is not None:
            metrics = {k: _plain(v) for k, v in self.compute_metrics(EvalPrediction(all_predictions,
                                                                                    all_labels)).items()}
        if all_losses is not None:
            metrics["loss"] = float(np.mean(all_losses))
        metrics = {(k if k.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{k}"): v
                   for k, v in metrics.items()}
        return EvalLoopOutput(all_predictions, all_labels, metrics, len(rows))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """``(loss, logits, labels)`` of one batch, as numpy (``None`` where absent or not asked for)."""
        label_names = self._label_names()
        has_labels = all(inputs.get(k) is not None for k in label_names)
        outputs = self._forward()(**inputs)
        loss = outputs.get("loss") if has_labels else None
        loss = None if loss is None else float(loss.asnumpy())
        if prediction_loss_only:
            return loss, None, None
        logits = self._logits(outputs, ignore_keys)
        return loss, logits, self._labels(inputs, label_names, has_labels)

    @staticmethod
    def _logits(outputs, ignore_keys):
        if "logits" in outputs and "logits" not in (ignore_keys or ()):
            return outputs["logits"].asnumpy()
        rest = tuple(v.asnumpy() for k, v in outputs.items()
                     if k != "loss" and k not in (ignore_keys or ()) and isinstance(v, ms.Tensor))
        return rest[0] if len(rest) == 1 else (rest or None)

    @staticmethod
    def _labels(inputs, label_names, has_labels):
        if not has_labels:
            return None
        labels = tuple(inputs[k].asnumpy() for k in label_names)
        return labels[0] if len(labels) == 1 else labels

    # ----- hyper-parameter search -----------------------------------------------------------------------------
    def _compute_objective(self, metrics):
        return float(self.compute_objective(dict(metrics)))

    def hyperparameter_search(self, hp_space=None, compute_objective=None, n_trials=20, direction="minimize",
                              backend=None, hp_name=None, **kwargs):
        """Search hyper-parameters with Optuna (``pip install 'mindpeft[optuna]'``): each trial sets the
        ``TrainingArguments`` fields that ``hp_space(trial)`` returns, trains a model from ``model_init`` into
        ``output_dir/run-<trial>`` and is scored by ``compute_objective(metrics)`` (default: the evaluation loss,
        or the sum of the other metrics). Returns the best trial as :class:`BestRun`; ``self.args`` is restored."""
        if backend not in (None, "optuna"):
            raise ValueError(f"backend={backend!r} is not supported; mindpeft searches with 'optuna'")
        try:
            import optuna
        except ImportError:
            raise ImportError("hyperparameter_search needs optuna: pip install 'mindpeft[optuna]'") from None
        if self.model_init is None:
            raise RuntimeError("To use hyperparameter search, you need to pass your model through a model_init "
                               "function")
        if self.distributed.enabled:
            raise NotImplementedError("hyperparameter_search runs in one process; launch it without msrun")
        hp_space = hp_space or default_hp_space_optuna
        self.compute_objective = compute_objective or default_compute_objective
        original = self.args
        fields = {f.name for f in dataclasses.fields(original)}
        optimize = {k: kwargs.pop(k) for k in ("timeout", "gc_after_trial", "callbacks", "catch") if k in kwargs}
        if kwargs.pop("n_jobs", 1) != 1:
            raise ValueError("n_jobs must be 1: trials share this Trainer")

        def objective(trial):
            params = hp_space(trial)
            unknown = sorted(set(params) - fields)
            if unknown:
                raise ValueError(f"hp_space returned {unknown}, which are not TrainingArguments fields")
            self.args = dataclasses.replace(original, **params,
                                            output_dir=os.path.join(original.output_dir, f"run-{trial.number}"))
            self._objective = None
            self.train(trial=trial)
            if self._objective is None:
                self._objective = self._compute_objective(self.evaluate())
            return self._objective

        study = optuna.create_study(direction=direction, study_name=hp_name, **kwargs)
        try:
            study.optimize(objective, n_trials=n_trials, **optimize)
        finally:
            self.args = original
            self._trial = None
        best = study.best_trial
        return BestRun(str(best.number), best.value, dict(best.params), study)


def _write(param, value):
    """``write_parameter``, keeping 0-d Parameters (the optimizer's step) 0-d."""
    if len(param.shape) == 0:
        param.copy_(ms.Tensor(np.asarray(value.asnumpy()).reshape(()), dtype=param.dtype))
    else:
        write_parameter(param, value)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


class Seq2SeqTrainer(Trainer):
    """A ``Trainer`` whose evaluation can generate: with ``args.predict_with_generate`` the predictions are
    generated ids (greedy; ``max_new_tokens`` / ``max_length`` in ``evaluate(...)`` or
    ``args.generation_max_length``), padded with the pad token, and the loss still comes from the labels."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if not getattr(self.args, "predict_with_generate", False) or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        label_names = self._label_names()
        has_labels = all(inputs.get(k) is not None for k in label_names)
        loss = None
        if has_labels:
            loss = float(self._forward()(**inputs)["loss"].asnumpy())
        generate_inputs = {k: v for k, v in inputs.items() if k not in label_names and k != "decoder_input_ids"}
        input_length = int(generate_inputs["input_ids"].shape[-1]) if "input_ids" in generate_inputs else 0
        generated = model.generate(**generate_inputs, **self._generation_options(gen_kwargs, input_length))
        generated = generated.asnumpy() if hasattr(generated, "asnumpy") else np.asarray(generated)
        return loss, generated, self._labels(inputs, label_names, has_labels)

    def _generation_options(self, gen_kwargs, input_length):
        """``generate`` keywords: ``max_length`` (transformers' meaning: the decoder start token, or the prompt,
        included) becomes ``max_new_tokens``."""
        options = dict(gen_kwargs)
        num_beams = options.pop("num_beams", None) or self.args.generation_num_beams
        if num_beams not in (None, 1):
            raise ValueError(f"num_beams={num_beams}: mindpeft generates greedily (num_beams=1)")
        max_length = options.pop("max_length", None) or self.args.generation_max_length
        if "max_new_tokens" not in options and max_length is not None:
            taken = 1 if getattr(base_model(self.model).config, "is_encoder_decoder", False) else input_length
            options["max_new_tokens"] = max(1, max_length - taken)
        return options

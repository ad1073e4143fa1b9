"""The ``Trainer``'s state and events, with transformers' names: ``TrainerState`` (saved as
``trainer_state.json``), ``TrainerControl``, ``TrainerCallback`` and the built-in callbacks (the default
log/evaluate/save flow, tqdm progress, TensorBoard, early stopping, stopping on SIGINT/SIGTERM)."""
import dataclasses
import functools
import json
import math
import signal
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from tqdm.auto import tqdm

from ..utils.io import json_dumps, write_json


@dataclass
class TrainerState:
    """Where training stands; ``log_history`` holds every log (``loss``, ``learning_rate``, ``eval_*`` ...)."""

    epoch: float = 0
    global_step: int = 0
    max_steps: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: Optional[int] = None
    num_train_epochs: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0
    log_history: List[Dict[str, float]] = field(default_factory=list)
    best_metric: Optional[float] = None
    best_global_step: Optional[int] = None
    best_model_checkpoint: Optional[str] = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: Optional[str] = None
    trial_params: Optional[Dict[str, object]] = None
    stateful_callbacks: Optional[Dict[str, object]] = None
    # mindpeft: running loss sums, so that a resumed run logs the same averages as an uninterrupted one
    loss_sums: Dict[str, float] = field(default_factory=lambda: {"total": 0.0, "since_log": 0.0,
                                                                  "steps_since_log": 0})

    def save_to_json(self, json_path):
        write_json(json_path, dataclasses.asdict(self))

    @classmethod
    def load_from_json(cls, json_path):
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainerControl:
    """Flags the callbacks set to steer the loop; reset after each use."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_epoch(self):
        self.should_epoch_stop = False


class ExportableState:
    """A callback whose ``state()`` (``{"args": {...}, "attributes": {...}}``) the ``Trainer`` writes into every
    checkpoint's ``trainer_state.json`` under ``stateful_callbacks[<class name>]`` (a list for several instances)."""

    def state(self):
        raise NotImplementedError("You must implement a `state` function to utilize this class.")


def exportable_states(callbacks):
    """``stateful_callbacks`` of ``trainer_state.json``: the states of the :class:`ExportableState` callbacks."""
    grouped = {}
    for callback in callbacks:
        if isinstance(callback, ExportableState):
            grouped.setdefault(type(callback).__name__, []).append(callback.state())
    return {name: states[0] if len(states) == 1 else states for name, states in grouped.items()}


class TrainerCallback:
    """Override the events you need; each gets ``(args, state, control, **kwargs)`` and may return a control."""

    def on_init_end(self, args, state, control, **kwargs):
        pass

    def on_train_begin(self, args, state, control, **kwargs):
        pass

    def on_train_end(self, args, state, control, **kwargs):
        pass

    def on_epoch_begin(self, args, state, control, **kwargs):
        pass

    def on_epoch_end(self, args, state, control, **kwargs):
        pass

    def on_step_begin(self, args, state, control, **kwargs):
        pass

    def on_step_end(self, args, state, control, **kwargs):
        pass

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        pass

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        pass

    def on_prediction_step(self, args, state, control, **kwargs):
        pass

    def on_save(self, args, state, control, **kwargs):
        pass

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class CallbackHandler:
    """Calls every callback in turn for an event: ``handler.on_log(args, state, control, logs=...)``."""

    def __init__(self, callbacks, model, processing_class, optimizer, lr_scheduler):
        self.callbacks = []
        for callback in callbacks:
            self.add_callback(callback)
        self.model = model
        self.processing_class = processing_class
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    def add_callback(self, callback):
        self.callbacks.append(callback() if isinstance(callback, type) else callback)

    def pop_callback(self, callback):
        for existing in self.callbacks:
            if existing is callback or (isinstance(callback, type) and isinstance(existing, callback)):
                self.callbacks.remove(existing)
                return existing
        return None

    def remove_callback(self, callback):
        self.pop_callback(callback)

    def __getattr__(self, event):
        if not event.startswith("on_"):
            raise AttributeError(event)
        return functools.partial(self._call, event)

    def _call(self, event, args, state, control, **kwargs):
        for callback in self.callbacks:
            result = getattr(callback, event)(args, state, control, model=self.model,
                                              processing_class=self.processing_class, optimizer=self.optimizer,
                                              lr_scheduler=self.lr_scheduler, **kwargs)
            if result is not None:
                control = result
        return control


class DefaultFlowCallback(TrainerCallback):
    """Asks for logs, evaluations and checkpoints as the ``*_strategy``/``*_steps`` arguments say (transformers'
    rules: at the last step, a ``steps`` strategy also evaluates and saves)."""

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step == 1 and args.logging_first_step:
            control.should_log = True
        if args.logging_strategy == "steps" and step % state.logging_steps == 0:
            control.should_log = True
        if args.eval_strategy == "steps" and step % state.eval_steps == 0:
            control.should_evaluate = True
        if args.save_strategy == "steps" and step % state.save_steps == 0:
            control.should_save = True
        if step >= state.max_steps:
            control.should_training_stop = True
            if args.eval_strategy == "steps" and step % state.eval_steps:
                control.should_evaluate = True
            if args.save_strategy == "steps":
                control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if args.logging_strategy == "epoch":
            control.should_log = True
        if args.eval_strategy == "epoch":
            control.should_evaluate = True
        if args.save_strategy == "epoch":
            control.should_save = True
        return control


def _format_logs(logs):
    return {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items() if k != "total_flos"}


class ProgressCallback(TrainerCallback):
    """A tqdm bar over the optimizer steps (and one per evaluation) on rank 0; logs are written above it."""

    def __init__(self):
        self.training_bar = None
        self.prediction_bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            self.training_bar.update(state.global_step - self.training_bar.n)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if state.is_world_process_zero and eval_dataloader is not None:
            if self.prediction_bar is None:
                self.prediction_bar = tqdm(total=len(eval_dataloader), leave=self.training_bar is None,
                                           dynamic_ncols=True)
            self.prediction_bar.update(1)

    def _close_prediction_bar(self):
        if self.prediction_bar is not None:
            self.prediction_bar.close()
            self.prediction_bar = None

    def on_evaluate(self, args, state, control, **kwargs):
        self._close_prediction_bar()

    def on_predict(self, args, state, control, **kwargs):
        self._close_prediction_bar()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.write(str(_format_logs(logs)))

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None


class PrinterCallback(TrainerCallback):
    """Prints the logs (rank 0) when progress bars are off."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            print(_format_logs(logs), flush=True)


def _tensorboard_tag(key):
    for prefix in ("eval_", "test_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"train/{key}"


class TensorBoardCallback(TrainerCallback):
    """Writes every numeric log as a TensorBoard scalar (``train/loss``, ``eval/accuracy`` ...) to
    ``args.logging_dir`` with tensorboardX (``pip install mindpeft[tensorboard]``), on rank 0."""

    def __init__(self, tb_writer=None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("report_to='tensorboard' writes event files with tensorboardX, which is not "
                              "installed: pip install 'mindpeft[tensorboard]'") from None
        self._writer_class = SummaryWriter
        self.tb_writer = tb_writer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.tb_writer is None:
            self.tb_writer = self._writer_class(logdir=args.logging_dir)
            self.tb_writer.add_text("args", json_dumps(args.to_dict()))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.tb_writer is None:
            self.tb_writer = self._writer_class(logdir=args.logging_dir)
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.tb_writer.add_scalar(_tensorboard_tag(key), value, state.global_step)
        self.tb_writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None


class EarlyStoppingCallback(TrainerCallback):
    """Stops training when ``args.metric_for_best_model`` has not improved (by more than
    ``early_stopping_threshold``) for ``early_stopping_patience`` evaluations."""

    def __init__(self, early_stopping_patience=1, early_stopping_threshold=0.0):
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold
        self.patience = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not args.load_best_model_at_end or args.metric_for_best_model is None:
            raise ValueError("EarlyStoppingCallback needs load_best_model_at_end=True and a metric_for_best_model")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        name = args.metric_for_best_model
        value = metrics.get(name if name.startswith("eval_") else f"eval_{name}")
        if value is None:
            return
        better = (state.best_metric is None or
                  (value - state.best_metric > self.early_stopping_threshold if args.greater_is_better
                   else state.best_metric - value > self.early_stopping_threshold))
        self.patience = 0 if better else self.patience + 1
        if self.patience >= self.early_stopping_patience:
            control.should_training_stop = True


class StopOnSignalCallback(TrainerCallback):
    """Stops training after the step in progress when the process gets SIGINT or SIGTERM (a second signal stops at
    once with ``KeyboardInterrupt``); ``stopped`` then says that ``train()`` returned early.

    The stop neither evaluates nor saves: the checkpoints written so far stay the resume points, and a resumed run
    repeats an uninterrupted one exactly (dropout is reseeded at checkpoint positions only). Both signals count as
    Ctrl-C: during graph runs MindSpore turns Ctrl-C into ``SIGTERM``. Handlers are installed in the main thread
    only, from ``on_train_begin`` to ``on_train_end``.
    """

    def __init__(self):
        self.signal = None
        self.stopped = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print("\nstopping after the current step (press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self.signal, self.stopped = None, False
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread
                pass

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal is not None and state.global_step < state.max_steps:
            control.should_training_stop = self.stopped = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped:  # the epoch was cut short: no evaluation or checkpoint at a position the schedule lacks
            control.should_log = control.should_evaluate = control.should_save = False

    def on_train_end(self, args, state, control, **kwargs):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

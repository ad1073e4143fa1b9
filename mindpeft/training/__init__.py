"""Training: the Trainer and its arguments, compiled steps, loops, data pipelines and collators, schedules."""
from .data import (BaseMapFunction, CausalLMTokenize, ClassificationTokenize, Seq2SeqTokenize, build_dataset,
                   read_csv, train_test_split)
from .loop import classification_accuracy, evaluate, generation_accuracy, train_epoch
from .schedules import (get_constant_schedule, get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                        get_linear_schedule_with_warmup, get_scheduler)
from .train_step import ForwardStep, TrainStep, model_loss
from .callbacks import (EarlyStoppingCallback, PrinterCallback, ProgressCallback, TensorBoardCallback, TrainerCallback,
                        TrainerControl, TrainerState)
from .data_collator import (DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, DataCollatorWithPadding,
                            default_data_collator)
from .trainer import BestRun, EvalPrediction, PredictionOutput, Seq2SeqTrainer, Trainer, TrainOutput
from .trainer_step import TrainerStep
from .training_args import Seq2SeqTrainingArguments, TrainingArguments

"""Training helpers shared by the tutorials and scripts."""
from .train_step import ForwardStep, TrainStep, model_loss

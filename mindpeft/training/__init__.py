"""Training helpers shared by the tutorials and scripts."""
from .train_step import TrainStep, model_loss

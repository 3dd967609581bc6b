"""Using a trained model: load a finished run with its classes and preprocessing, predict
on image files, evaluate on a labelled folder, export to formats that run without freezetune.

On the train layer's level: it needs the data, the models and the run record, not training."""

from freezetune.infer.runs import CHECKPOINT_FILES, MODEL_FORMAT, RunModel, load_run

__all__ = ["CHECKPOINT_FILES", "MODEL_FORMAT", "RunModel", "load_run"]

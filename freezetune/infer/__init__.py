"""Using a trained model: load a finished run with its classes and preprocessing, predict
on image files, evaluate on a labelled folder, export to formats that run without freezetune.

On the train layer's level: it needs the data, the models and the run record, not training."""

from freezetune.infer.export import (
    DEFAULT_ATOL,
    EXPORT_FORMATS,
    SIDECAR_FORMAT,
    ExportFailed,
    ExportMismatch,
    ExportResult,
    check_batch,
    default_export_path,
    export_model,
    load_snippet,
    require_onnx,
    sidecar_path,
)
from freezetune.infer.metrics import (
    ClassMetrics,
    accuracy,
    confusion_matrix,
    evaluation_report,
    macro_average,
    per_class_metrics,
)
from freezetune.infer.predict import (
    LabelledPredictions,
    Prediction,
    find_images,
    labelled_images,
    predict_dataset,
    predict_files,
    top_k,
)
from freezetune.infer.runs import CHECKPOINT_FILES, MODEL_FORMAT, RunModel, load_run

__all__ = [
    "CHECKPOINT_FILES",
    "DEFAULT_ATOL",
    "EXPORT_FORMATS",
    "MODEL_FORMAT",
    "SIDECAR_FORMAT",
    "ClassMetrics",
    "ExportFailed",
    "ExportMismatch",
    "ExportResult",
    "LabelledPredictions",
    "Prediction",
    "RunModel",
    "accuracy",
    "check_batch",
    "confusion_matrix",
    "default_export_path",
    "evaluation_report",
    "export_model",
    "find_images",
    "labelled_images",
    "load_run",
    "load_snippet",
    "macro_average",
    "per_class_metrics",
    "predict_dataset",
    "predict_files",
    "require_onnx",
    "sidecar_path",
    "top_k",
]

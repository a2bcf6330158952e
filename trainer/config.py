"""The training configuration: one flat, typed dataclass with commented defaults, and `resolve`.

`rotnet-train` fills a `TrainConfig` from its options (whose defaults are this class's); `resolve`
completes it with what the records' manifest says (image size, channels, angles, counts, steps), and
trainer.machine adds what the machine has (GPUs, precision, strategy). The resolved config is written to
`train_config.json` beside the model, so a run can always be traced and a model reloaded with exactly
its training preprocessing. Pure Python: importing this module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from schemas.angles import describe_angles

if TYPE_CHECKING:
    import schemas

MODELS = ("mnist-cnn", "mnist-cnn-bn", "resnet50", "mobilenet-v3-small")
HEADS = ("classification", "circular-gaussian", "regression")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
LR_SCHEDULES = ("plateau", "cosine")
# Which epoch's weights a run publishes as model.keras: best = the lowest validation angle error (chosen on
# the validation split); last = the final epoch's, chosen on nothing (a report on the validation split
# is then not biased by the choice).
KEEP_MODELS = ("best", "last")
# XLA for the training step: auto = Keras's choice (on with a GPU, off on a CPU-only machine, where
# TensorFlow's oneDNN kernels beat XLA's: 0.37x for the MNIST recipe's step, rotnet-bench train_step).
JIT_COMPILES = ("auto", "on", "off")
# Models built on keras.applications backbones: they accept --weights imagenet|none|<path>.
PRETRAINED_BACKBONES = ("resnet50", "mobilenet-v3-small")
# Models whose size --width scales, and its bound (3: ~9x the multiply-adds of width 1, ~200 M per 28 px
# image; beyond that a 2-core CPU run of the recipe would take hours).
WIDTH_MODELS = ("mnist-cnn-bn",)
MAX_WIDTH = 3.0
# Models with dropout layers that --dropout sets (each model's own rate when it is not given).
DROPOUT_MODELS = ("mnist-cnn", "mnist-cnn-bn")
MAX_DROPOUT = 0.9
# How the MNIST CNNs' pooling layers downsample (--pool): "max", RotNet's 2x2 max pooling, or "blur", max
# at stride 1 then a fixed binomial blur at stride 2 (anti-aliased: Zhang, "Making Convolutional
# Networks Shift-Invariant Again", 2019), so the features change less with how an image was resampled.
POOLINGS = ("max", "blur")
POOL_MODELS = ("mnist-cnn", "mnist-cnn-bn")
# Preprocessing of uint8 pixels, done by the models' first layer (trainer.models.Preprocess):
#   binarize  RotNet's MNIST binarization (pixel / 255 >= 0.1 -> 1.0 else 0.0)
#   scale     pixel / 255
#   caffe     keras.applications.resnet50.preprocess_input: RGB->BGR, minus the ImageNet channel means
#   raw       float pixels 0..255 (MobileNetV3 rescales inside the model)
PREPROCESSINGS = ("binarize", "scale", "caffe", "raw")

# Output names inside --output (rotnet-train writes them: trainer/run_dir.py lists them all; trainer.predict reads them).
CONFIG_FILE = "train_config.json"
MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"


class TrainingError(Exception):
    """A problem the user can fix (bad records, damaged shards, mismatching resume); one line."""


@dataclass
class TrainConfig:
    # --- where ---
    records: str = ""  # records directory (local or gs://) holding dataset_info.json and the shards
    output: str = ""  # directory for model.keras, saved_model/, train_config.json, metrics.json, logs

    # --- what to learn ---
    model: str = "mnist-cnn"  # one of MODELS; mnist-cnn is RotNet's MNIST architecture unchanged
    weights: str | None = None  # imagenet | none | <path> for backbones; None = imagenet for backbones
    head: str = "classification"  # one of HEADS
    sigma_degrees: float = 3.0  # circular-gaussian head: standard deviation of the soft label
    width: float = 1.0  # mnist-cnn-bn: every layer's filters and units times this (1.5: 48-48/96-96/192/384)
    dropout: float | None = None  # the MNIST CNNs' dropout rate; None = the model's own (0.25, bn: 0.15)
    pool: str = "max"  # the MNIST CNNs' downsampling: max (RotNet's) or blur (anti-aliased; POOLINGS)
    angles: list[int] | None = None  # train on these angles only (labels remapped); None = all in shards
    max_images: float | None = None  # <= 1: fraction of training images; > 1: about that many (stable hash)
    binarize: bool | None = None  # None = RotNet's binarization for the MNIST CNNs on MNIST records
    # Random blur/sharpening, noise and (RGB) JPEG re-encoding of training batches, drawn independently of
    # the angle (trainer.data.augment_images): the model sees many resamplings of every angle.
    augment: bool = False
    # A rotation-free elastic resampling with a random kernel (nearest, bilinear, bicubic) of half the
    # training images (trainer.augment.warp_batch): new handwriting and other rotation code's looks.
    warp: bool = False

    # --- how long and how fast ---
    epochs: int = 50
    steps_per_epoch: int | None = None  # None = one pass over the source images (not all rotations)
    validation_steps: int | None = None  # None = about one record per validation image, >= 2,048 records
    batch_size: int = 128  # per replica; the global batch is batch_size * number of replicas
    learning_rate: float = 1e-3  # Adam
    # Decoupled weight decay (AdamW): each step every kernel shrinks by lr * weight_decay of itself; the
    # batch-norm scales/offsets and biases are left alone. 0 = plain Adam.
    weight_decay: float = 0.0
    lr_schedule: str = "plateau"  # plateau: ReduceLROnPlateau; cosine: cosine decay over all steps
    reduce_lr_patience: int = 3  # plateau: epochs without a better validation angle error before LR x factor
    reduce_lr_factor: float = 0.5  # plateau: the learning rate is multiplied by this at each plateau
    min_learning_rate: float = 1e-6  # plateau: never below this
    cosine_final_fraction: float = 0.01  # cosine: the learning rate ends at this fraction of --lr
    early_stopping_patience: int = 10  # epochs without a better validation angle error before stopping
    precision: str = "auto"  # auto = mixed_float16 on GPU, float32 on CPU
    jit_compile: str = "auto"  # one of JIT_COMPILES: XLA-compile the training step
    keep_model: str = "best"  # one of KEEP_MODELS: the epoch whose weights become model.keras

    # --- input pipeline ---
    shuffle_buffer: int = 10_000  # records; mixes angles and images across the interleaved shards
    cycle_length: int = 16  # shards read at once (capped by the number of shards)
    seed: int = 0  # file order, shard start records and shuffle seed (each pass still reshuffles)
    # Off: the interleave and the maps hand on whichever batch is ready (faster). On: the same seed and
    # records give the same batches, in the same order (for debugging and reproducible ablations).
    deterministic: bool = False
    skip_corrupt_shards: bool = False  # check every shard's CRCs first and leave out damaged ones
    # JAX and torch (the TF-free loader, trainer.numpy_data): processes decoding records; None = every core
    workers: int | None = None

    # --- fault tolerance and logs ---
    backup_every_steps: int | None = None  # None = back up at each epoch end; N = every N steps too
    tensorboard: bool = True
    cluster_timeout: float = 300.0  # seconds a TF_CONFIG worker waits for its peers before giving up

    # --- filled in by `resolve` from the manifest and the machine ---
    dataset: str = ""
    image_size: list[int] = field(default_factory=list)  # [height, width]
    channels: int = 0
    image_format: str = ""
    compression: str = "none"
    record_angles: list[int] = field(default_factory=list)  # the angles the records hold (manifest)
    bin_angles: list[int] = field(default_factory=list)  # the angle of each output bin, ascending
    preprocessing: str = ""  # one of PREPROCESSINGS
    resolved_precision: str = ""
    backend: str = ""  # the Keras backend that trained: tensorflow | jax | torch (trainer.backends)
    strategy: str = ""  # default | mirrored | multi_worker
    num_replicas: int = 1
    train_fraction: float = 1.0  # --max-images as the fraction of image ids kept (schemas.splits.in_subset)
    num_train_images: int = 0  # source images used for training (about, after --max-images)
    num_validation_images: int = 0
    validation_fraction: float = 1.0  # share of validation records sampled (by a hash of the record)
    # How the records drew each source image (pipeline.geometry.View.to_dict, from the manifest): the
    # serving paths prepare a photo exactly so (trainer.predict). None in runs made before it existed.
    view: dict[str, Any] | None = None

    @property
    def num_bins(self) -> int:
        return len(self.bin_angles)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * max(1, self.num_replicas)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))


def check(config: TrainConfig) -> list[str]:
    """Problems with the user's choices, as sentences (empty when fine)."""
    problems = []
    if config.model not in MODELS:
        problems.append(f"model {config.model!r} is not one of {', '.join(MODELS)}")
    if config.head not in HEADS:
        problems.append(f"head {config.head!r} is not one of {', '.join(HEADS)}")
    if config.precision not in PRECISIONS:
        problems.append(f"precision {config.precision!r} is not one of {', '.join(PRECISIONS)}")
    if config.lr_schedule not in LR_SCHEDULES:
        problems.append(f"lr schedule {config.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
    if config.keep_model not in KEEP_MODELS:
        problems.append(f"keep-model {config.keep_model!r} is not one of {', '.join(KEEP_MODELS)}")
    if config.jit_compile not in JIT_COMPILES:
        problems.append(f"jit-compile {config.jit_compile!r} is not one of {', '.join(JIT_COMPILES)}")
    if config.weights not in (None, "none") and config.model not in PRETRAINED_BACKBONES:
        problems.append(f"--weights applies to {', '.join(PRETRAINED_BACKBONES)}, not {config.model}")
    # `not x > 0` rather than `x <= 0`: NaN fails every comparison, so `nan <= 0` would let it through.
    if not (math.isfinite(config.sigma_degrees) and config.sigma_degrees > 0):
        problems.append(f"--sigma must be a positive, finite number of degrees, not {config.sigma_degrees}")
    if not (math.isfinite(config.width) and 0 < config.width <= MAX_WIDTH):
        problems.append(f"--width must be a number above 0 and at most {MAX_WIDTH:g}, not {config.width}")
    elif config.width != 1.0 and config.model not in WIDTH_MODELS:
        problems.append(f"--width applies to {', '.join(WIDTH_MODELS)}, not {config.model}")
    if config.dropout is not None:
        if not (math.isfinite(config.dropout) and 0 <= config.dropout <= MAX_DROPOUT):
            problems.append(f"--dropout must be a rate from 0 to {MAX_DROPOUT:g}, not {config.dropout}")
        elif config.model not in DROPOUT_MODELS:
            problems.append(f"--dropout applies to {', '.join(DROPOUT_MODELS)}, not {config.model}")
    if config.pool not in POOLINGS:
        problems.append(f"--pool must be one of {', '.join(POOLINGS)}, not {config.pool!r}")
    elif config.pool != "max" and config.model not in POOL_MODELS:
        problems.append(f"--pool {config.pool} applies to {', '.join(POOL_MODELS)}, not {config.model}")
    if not (math.isfinite(config.weight_decay) and 0 <= config.weight_decay < 1):
        problems.append(
            f"--weight-decay must be a number from 0 up to (not including) 1, not {config.weight_decay}"
        )
    if config.angles is not None:
        if not config.angles:
            problems.append("angles must not be empty")
        if any(not 0 <= angle < 360 for angle in config.angles):
            problems.append("angles must be in 0..359")
        if len(set(config.angles)) != len(config.angles):
            problems.append("angles must not repeat")
    if config.max_images is not None and not (math.isfinite(config.max_images) and config.max_images > 0):
        problems.append("max-images must be positive (a count, or a fraction <= 1)")
    for name in ("epochs", "batch_size", "shuffle_buffer", "cycle_length"):
        if getattr(config, name) < 1:
            problems.append(f"{name.replace('_', '-')} must be at least 1")
    for name in ("steps_per_epoch", "validation_steps", "backup_every_steps", "workers"):
        value = getattr(config, name)
        if value is not None and value < 1:
            problems.append(f"{name.replace('_', '-')} must be at least 1")
    if not (math.isfinite(config.cluster_timeout) and config.cluster_timeout > 0):
        problems.append(
            f"--cluster-timeout must be a positive number of seconds, not {config.cluster_timeout}"
        )
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        problems.append(f"--lr must be a positive, finite number (e.g. 1e-3), not {config.learning_rate}")
    return problems


def choose_preprocessing(model: str, dataset: str, binarize: bool | None) -> str:
    """The preprocessing a model is trained with (see PREPROCESSINGS)."""
    if model == "resnet50":
        return "caffe"
    if model == "mobilenet-v3-small":
        return "raw"
    if binarize is None:
        binarize = dataset == "mnist"  # RotNet binarizes MNIST; binarized photos would be meaningless
    return "binarize" if binarize else "scale"


def subset_fraction(max_images: float | None, num_train_images: int) -> float:
    """--max-images as the fraction of image ids kept by `schemas.splits.in_subset` (1.0 = all)."""
    if max_images is None:
        return 1.0
    if max_images <= 1.0:
        return float(max_images)
    return min(1.0, max_images / max(1, num_train_images))


def default_steps_per_epoch(num_train_images: int, global_batch_size: int) -> int:
    """One epoch = about one pass over the source images (a pass over all 360 rotations is 360x)."""
    return max(1, math.ceil(num_train_images / global_batch_size))


# The default validation steps score at least this many records (a steadier mean), at most the split.
MIN_VALIDATION_RECORDS = 2048


def default_validation_steps(num_validation_images: int, num_validation_records: int, batch_size: int) -> int:
    """About one record per validation image, at least 2,048 records (a steadier mean), at most the split."""
    wanted = min(num_validation_records, max(num_validation_images, MIN_VALIDATION_RECORDS))
    return max(1, math.ceil(wanted / batch_size))


def sampling_fraction(records_wanted: float, records_available: float) -> float:
    """The share of records to keep so that about `records_wanted` come out of `records_available`."""
    return 1.0 if records_available <= 0 else min(1.0, records_wanted / records_available)


def records_view(info: schemas.DatasetInfo) -> dict[str, Any]:
    """The records' view (pipeline.geometry.View as a dict) from their manifest: size, channels and
    angles from its header, crop and rendering from its pipeline config (the pipeline's defaults of the
    version that wrote it where a key is missing: MNIST uncropped, photos cropped at their largest)."""
    pipeline_config = info.config or {}
    crop = pipeline_config.get("crop_largest_rect")
    return {
        "image_size": int(info.image.height),
        "channels": int(info.image.channels),
        "center_crop": bool(pipeline_config.get("center_crop", True)),
        "crop_position": str(pipeline_config.get("crop_position", "center")),
        "crop_largest_rect": bool(info.dataset != "mnist" if crop is None else crop),
        "crop_scale": str(pipeline_config.get("crop_scale", "largest")),
        "rendering": str(pipeline_config.get("rendering", "legacy")),
        "angles_degrees": sorted(int(angle) for angle in info.angles_degrees),
    }


def resolve(config: TrainConfig, info: schemas.DatasetInfo, num_replicas: int = 1) -> TrainConfig:
    """Fill in what the manifest decides: image size, angles/bins, preprocessing, counts, steps."""
    config.dataset = info.dataset
    config.image_size = [info.image.height, info.image.width]
    config.channels = info.image.channels
    config.image_format = info.image.format
    config.compression = info.compression
    config.view = records_view(info)
    config.num_replicas = max(1, num_replicas)
    available = sorted(info.angles_degrees)
    config.record_angles = available
    if config.angles is not None:
        missing = sorted(set(config.angles) - set(available))
        if missing:
            raise TrainingError(
                f"--angles {describe_angles(missing)} are not in these records (they hold {describe_angles(available)})"
            )
        config.bin_angles = sorted(config.angles)
    else:
        config.bin_angles = available
    config.preprocessing = choose_preprocessing(config.model, info.dataset, config.binarize)
    if "train" not in info.splits or info.splits["train"].num_images == 0:
        raise TrainingError(f"{config.records} has no training images (splits: {sorted(info.splits)})")
    train_images = info.splits["train"].num_images
    config.train_fraction = subset_fraction(config.max_images, train_images)
    config.num_train_images = max(1, round(train_images * config.train_fraction))
    validation = info.splits.get("validation")
    config.num_validation_images = validation.num_images if validation else 0
    if config.steps_per_epoch is None:
        config.steps_per_epoch = default_steps_per_epoch(config.num_train_images, config.global_batch_size)
    in_bins = len(set(config.bin_angles) & set(available))
    if config.num_validation_images:
        records = config.num_validation_images * in_bins
        if config.validation_steps is None:
            config.validation_steps = default_validation_steps(
                config.num_validation_images, records, config.global_batch_size
            )
        # A quarter more than needed, so that the hash sample rarely falls short (it then wraps around).
        wanted = 1.25 * config.validation_steps * config.global_batch_size
        config.validation_fraction = sampling_fraction(wanted, records)
    return config

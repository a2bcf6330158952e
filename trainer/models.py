"""The models: RotNet's MNIST CNN, an improved variant, ResNet50 and MobileNetV3-Small backbones.

Every model takes uint8 images (B, H, W, C) as they come out of the records, starts with a
`Preprocess` layer (binarize / scale / caffe, trainer.preprocessing, keras.ops in float32) and
ends in the head's output layer, also computed in float32 under mixed precision (a float16 softmax
loses the small probabilities the loss needs). A model.keras file therefore holds its preprocessing;
`import trainer.models` registers the Preprocess layer before `keras.saving.load_model`.

* mnist-cnn           exactly RotNet's MNIST network: conv64 3x3 relu, conv64 3x3 relu, maxpool 2,
                      dropout 0.25, flatten, dense 128 relu, dropout 0.25, dense num_bins softmax.
* mnist-cnn-bn        the same size class with batch normalization and a third conv stage: trains
                      faster and further on the 4,500-digit subset (see docs/trainer.md).
* resnet50            keras.applications.ResNet50 (no top, global average pooling) + the head;
                      grey inputs are repeated to 3 channels, inputs under 32 px resized to 32.
* mobilenet-v3-small  keras.applications.MobileNetV3Small, the CPU/mobile-friendly backbone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np

from trainer.config import TrainConfig
from trainer.heads import Head
from trainer.preprocessing import preprocess_images

# keras.applications backbones refuse inputs smaller than this.
MIN_BACKBONE_SIZE = 32


@keras.saving.register_keras_serializable(package="rotnet")
class Preprocess(keras.layers.Layer):
    """uint8 pixels -> float32 model input; `mode` is one of trainer.config.PREPROCESSINGS."""

    def __init__(self, mode: str, **kwargs):
        kwargs["dtype"] = "float32"  # exact thresholds and means, also under mixed precision
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images):
        return preprocess_images(images, self.mode)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Build layers under a Keras dtype policy (float32, mixed_float16, mixed_bfloat16), then restore
    the previous global policy; the layers keep theirs, and compile() adds loss scaling for float16."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(config: TrainConfig, head: Head) -> keras.Model:
    """The model for a resolved config (image_size, channels, precision filled in)."""
    height, width = config.image_size
    with precision_policy(config.resolved_precision or "float32"):
        inputs = keras.Input(shape=(height, width, config.channels), dtype="uint8", name="image")
        pixels = Preprocess(config.preprocessing, name="preprocess")(inputs)
        if config.model == "mnist-cnn":
            dropout = 0.25 if config.dropout is None else config.dropout
            features = _rotnet_mnist_features(pixels, dropout, config.pool)
        elif config.model == "mnist-cnn-bn":
            dropout = 0.15 if config.dropout is None else config.dropout
            features = _mnist_bn_features(pixels, config.width, dropout, config.pool)
        elif config.model in ("resnet50", "mobilenet-v3-small"):
            features = _backbone_features(pixels, config.model, config.weights or "imagenet")
        else:
            raise ValueError(f"unknown model {config.model!r}")
        logits = keras.layers.Dense(head.num_outputs, name="logits")(features)
        outputs = keras.layers.Activation(head.activation, dtype="float32", name="angle_output")(logits)
        return keras.Model(inputs, outputs, name=config.model.replace("-", "_"))


# --pool blur's filter: the 3-tap binomial [1, 2, 1] / 4 in each direction.
BLUR_TAPS = np.array([1.0, 2.0, 1.0]) / 4.0


def _pool(x: keras.KerasTensor, pool: str, name: str) -> keras.KerasTensor:
    """Halve the height and width: 2x2 max pooling ("max"), or ("blur") the max of each 2x2 window at
    stride 1, then a fixed, untrained binomial blur at stride 2, each channel on its own (anti-aliased
    pooling, Zhang 2019). The zero padding puts each blurred output on the center of the 2x2 window
    max pooling would have taken, so both give the same size and the same grid (activations are >= 0
    after ReLU: zero is their floor, not a new value)."""
    if pool == "max":
        return keras.layers.MaxPooling2D(2, name=name)(x)
    x = keras.layers.MaxPooling2D(2, strides=1, name=f"{name}_max")(x)
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    kernel = np.outer(BLUR_TAPS, BLUR_TAPS)[:, :, np.newaxis, np.newaxis]
    return keras.layers.DepthwiseConv2D(
        3,
        strides=2,
        use_bias=False,
        trainable=False,
        depthwise_initializer=keras.initializers.Constant(kernel.tolist()),
        name=f"{name}_blur",
    )(x)


def _rotnet_mnist_features(
    inputs: keras.KerasTensor, dropout: float = 0.25, pool: str = "max"
) -> keras.KerasTensor:
    """RotNet's train_mnist.py, layer for layer (64 filters, 3x3 kernels, 2x2 pooling, valid padding;
    dropout 0.25 unless --dropout says otherwise; --pool blur anti-aliases the pooling)."""
    x = keras.layers.Conv2D(64, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = _pool(x, pool, "pool")
    x = keras.layers.Dropout(dropout, name="dropout1")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="dense")(x)
    return keras.layers.Dropout(dropout, name="dropout2")(x)


def _conv_bn(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _mnist_bn_features(
    inputs: keras.KerasTensor, width: float = 1.0, dropout: float = 0.15, pool: str = "max"
) -> keras.KerasTensor:
    """32-32 / pool / 64-64 / pool / 128, batch-normalized, then dense 256: about RotNet's compute
    (~23 M multiply-adds per 28 px image), more depth, and the spatial layout kept to the dense layer
    (an angle is a spatial property; global pooling would throw it away). Dropout 0.15: with 0.3 the
    network underfit the 4,500 digits x 360 angles (5.81 vs 5.39 degrees after 100 epochs). `width`
    (--width) multiplies every count (rounded): the compute grows about as its square; `dropout`
    (--dropout) is both dropout layers' rate; `pool` (--pool) max or anti-aliased blur pooling."""

    def scaled(count: int) -> int:
        return max(1, round(count * width))

    x = _conv_bn(inputs, scaled(32), "block1a")
    x = _conv_bn(x, scaled(32), "block1b")
    x = _pool(x, pool, "pool1")
    x = _conv_bn(x, scaled(64), "block2a")
    x = _conv_bn(x, scaled(64), "block2b")
    x = _pool(x, pool, "pool2")
    x = _conv_bn(x, scaled(128), "block3")
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(dropout, name="dropout1")(x)
    x = keras.layers.Dense(scaled(256), use_bias=False, name="dense")(x)
    x = keras.layers.BatchNormalization(name="dense_bn")(x)
    x = keras.layers.Activation("relu", name="dense_relu")(x)
    return keras.layers.Dropout(dropout, name="dropout2")(x)


def _backbone_features(inputs: keras.KerasTensor, model: str, weights: str) -> keras.KerasTensor:
    x = inputs
    if x.shape[-1] == 1:  # ImageNet backbones want 3 channels
        x = keras.layers.Concatenate(name="grey_to_rgb")([x, x, x])
    height, width = x.shape[1], x.shape[2]
    if height < MIN_BACKBONE_SIZE or width < MIN_BACKBONE_SIZE:
        height, width = max(height, MIN_BACKBONE_SIZE), max(width, MIN_BACKBONE_SIZE)
        x = keras.layers.Resizing(height, width, interpolation="bilinear", name="upsize")(x)
    weights_argument = None if weights == "none" else weights  # "imagenet" or a weights file path
    if model == "resnet50":
        backbone = keras.applications.ResNet50(
            include_top=False, weights=weights_argument, input_shape=(height, width, 3), pooling="avg"
        )
    else:
        # include_preprocessing: the model rescales 0..255 inputs itself ("raw" preprocessing).
        backbone = keras.applications.MobileNetV3Small(
            include_top=False,
            weights=weights_argument,
            input_shape=(height, width, 3),
            pooling="avg",
            include_preprocessing=True,
        )
    return backbone(x)

"""Heads, metrics and models: the angle math as NumPy property tests, the TensorFlow side against it,
the strategy/precision decisions, and the architectures (RotNet's MNIST CNN layer by layer)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import angle_error_degrees
from trainer import heads
from trainer.config import TrainConfig, check, choose_preprocessing, subset_fraction
from trainer.heads import Head

angles_st = st.integers(min_value=0, max_value=359)
ALL_BINS = tuple(range(360))


# --- Pure NumPy angle math ----------------------------------------------------------------------


@given(angles_st, angles_st)
def test_circular_difference_is_symmetric_bounded_and_shift_invariant(a: int, b: int) -> None:
    difference = float(heads.circular_difference_degrees(a, b))
    assert 0 <= difference <= 180
    assert difference == float(heads.circular_difference_degrees(b, a))
    assert difference == float(heads.circular_difference_degrees(a + 360, b - 720))
    assert difference == min(abs(a - b), 360 - abs(a - b))


def test_angle_error_examples() -> None:
    assert angle_error_degrees(np.array([0, 10, 350]), np.array([359, 20, 10])) == pytest.approx(31 / 3)
    assert angle_error_degrees(np.array([0]), np.array([180])) == 180.0


@settings(max_examples=30)
@given(st.lists(angles_st, min_size=1, max_size=8), st.floats(min_value=0.5, max_value=20))
def test_soft_labels_peak_at_the_true_angle_and_sum_to_one(true_angles: list[int], sigma: float) -> None:
    labels = heads.soft_labels(ALL_BINS, np.array(true_angles), sigma)
    assert labels.shape == (len(true_angles), 360)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-5)
    assert list(labels.argmax(axis=1)) == true_angles
    # symmetric on the circle: one degree either side weighs the same, also across 0/359
    rows = np.arange(len(true_angles))
    np.testing.assert_allclose(
        labels[rows, (np.array(true_angles) + 1) % 360], labels[rows, (np.array(true_angles) - 1) % 360]
    )


@settings(max_examples=30)
@given(angles_st, st.floats(min_value=0.05, max_value=1.0))
def test_regression_probabilities_point_at_the_vector(angle: int, length: float) -> None:
    radians = np.radians(angle)
    vector = length * np.array([[np.cos(radians), np.sin(radians)]])
    probabilities = heads.probabilities_from_vectors(vector, ALL_BINS)
    np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-5)
    assert int(np.argmax(probabilities)) == angle


def test_regression_confidence_grows_with_vector_length() -> None:
    head = Head("regression", ALL_BINS)
    vectors = np.array([[0.2, 0.0], [0.6, 0.0], [0.95, 0.0]])
    _, confidence = head.decode(head.probabilities(vectors))
    assert confidence[0] < confidence[1] < confidence[2]


@settings(max_examples=40)
@given(angles_st, st.sampled_from([90, 180, 270]))
def test_combine_rotations_undoes_the_turn_exactly(angle: int, rotation: int) -> None:
    """The model sees angle + rotation on the turned image; undoing gives the original angle."""
    seen = np.zeros((1, 360), np.float32)
    seen[0, (angle + rotation) % 360] = 1.0
    original = np.zeros((1, 360), np.float32)
    original[0, angle] = 1.0
    combined = heads.combine_rotations([original, seen], [0, rotation], ALL_BINS)
    assert int(np.argmax(combined)) == angle
    np.testing.assert_allclose(combined[0, angle], 1.0)


def test_combine_rotations_on_a_four_bin_subset() -> None:
    bins = (0, 90, 180, 270)
    # true angle 90 (bin 1); turned by 90 the model sees 180 (bin 2), by 180 it sees 270 (bin 3), ...
    by_rotation = [np.eye(4, dtype=np.float32)[[index]] for index in (1, 2, 3, 0)]
    combined = heads.combine_rotations(by_rotation, [0, 90, 180, 270], bins)
    np.testing.assert_allclose(combined, [[0.0, 1.0, 0.0, 0.0]])


def test_combine_rotations_averages_disagreement() -> None:
    first = np.zeros((1, 360), np.float32)
    first[0, 10] = 1.0
    second = np.zeros((1, 360), np.float32)
    second[0, 190] = 1.0  # turned by 180: also says 10
    third = np.zeros((1, 360), np.float32)
    third[0, 0] = 1.0  # turned by 180: says 180 (a flip)
    combined = heads.combine_rotations([first, second, third], [0, 180, 180], ALL_BINS)
    np.testing.assert_allclose(combined[0, [10, 180]], [2 / 3, 1 / 3], rtol=1e-6)


def test_decode_confidence_window() -> None:
    probabilities = np.zeros((1, 360), np.float32)
    probabilities[0, [358, 359, 0, 1, 2]] = [0.1, 0.2, 0.4, 0.2, 0.1]
    angles, confidence = heads.decode_probabilities(probabilities, ALL_BINS, 0.0)
    assert angles.tolist() == [0] and confidence[0] == pytest.approx(0.4)
    _, confidence = heads.decode_probabilities(probabilities, ALL_BINS, 1.0)
    assert confidence[0] == pytest.approx(0.8)


def test_rotate_images_90_and_tta_rotations() -> None:
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1)
    turned = heads.rotate_images_90(images, 90)
    np.testing.assert_array_equal(turned[1, :, :, 0], np.rot90(images[1, :, :, 0]))
    np.testing.assert_array_equal(heads.rotate_images_90(turned, 270), images)
    assert heads.tta_rotations(4) == [0, 90, 180, 270] and heads.tta_rotations(1) == [0]
    with pytest.raises(ValueError):
        heads.tta_rotations(3)


# --- The TensorFlow and keras.ops sides agree with NumPy ------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([ALL_BINS, (0, 90, 180, 270), tuple(range(0, 360, 7))]),
    st.sampled_from([0.05, 0.5, 5.0]),
)
def test_least_error_bin_has_the_least_expected_error(
    seed: int, bins: tuple[int, ...], spread: float
) -> None:
    """Brute force: no bin's expected circular error under the row is below the chosen bin's."""
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.full(len(bins), spread), size=8)
    chosen = heads.least_error_bins(probabilities, bins)
    for row, index in zip(probabilities, chosen, strict=True):
        expected = [sum(p * angle_error_degrees(b, a) for p, a in zip(row, bins, strict=True)) for b in bins]
        assert expected[index] <= min(expected) + 1e-9


def test_least_error_bin_is_the_circular_median_not_the_argmax() -> None:
    probabilities = np.zeros((3, 360))
    probabilities[0, [10, 20, 21, 22]] = [0.3, 0.25, 0.25, 0.2]  # argmax 10; half the mass is at or below 20
    probabilities[1, 359] = 1.0  # one-hot: its bin
    probabilities[2, [358, 359, 0, 1, 2]] = [0.1, 0.2, 0.4, 0.2, 0.1]  # symmetric across 0: the peak
    angles, confidence = heads.decode_probabilities(probabilities, ALL_BINS, 2.0)
    assert angles.tolist() == [20, 359, 0]
    assert confidence.tolist() == pytest.approx([0.7, 1.0, 1.0])
    assert np.argmax(probabilities[0]) == 10  # what the argmax would have said


@pytest.mark.parametrize("name", ["classification", "circular-gaussian", "regression"])
@pytest.mark.parametrize("bins", [ALL_BINS, (0, 90, 180, 270)])
def test_head_targets_and_metrics_tf_match_numpy(name: str, bins: tuple[int, ...]) -> None:
    import tensorflow as tf

    head = Head(name, bins, sigma_degrees=4.0)
    rng = np.random.default_rng(1)
    true_bins = rng.integers(0, len(bins), 16)
    targets_tf = head.targets_tf(tf.constant(true_bins)).numpy()
    np.testing.assert_allclose(targets_tf, head.targets(true_bins), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(head.true_bins(tf.constant(targets_tf))), true_bins)

    outputs = rng.normal(size=(16, head.num_outputs)).astype(np.float32)
    if name != "regression":
        outputs = np.exp(outputs) / np.exp(outputs).sum(axis=1, keepdims=True)
    probabilities_tf = head.probabilities_tf(tf.constant(outputs)).numpy()
    np.testing.assert_allclose(probabilities_tf, head.probabilities(outputs), atol=1e-5)
    probabilities_ops = np.asarray(head.probabilities_ops(tf.constant(outputs)))  # keras.ops, as the metrics
    np.testing.assert_allclose(probabilities_ops, head.probabilities(outputs), atol=1e-5)
    predicted, _ = head.decode(head.probabilities(outputs))

    angle_error, accuracy = head.metrics()
    angle_error.update_state(tf.constant(targets_tf), tf.constant(outputs))
    accuracy.update_state(tf.constant(targets_tf), tf.constant(outputs))
    true_angles = np.asarray(bins)[true_bins]
    assert float(angle_error.result()) == pytest.approx(angle_error_degrees(true_angles, predicted), abs=1e-3)
    assert float(accuracy.result()) == pytest.approx(np.mean(true_angles == predicted))


# --- Config, strategy and precision decisions ---------------------------------------------------


def test_precision_auto_is_mixed_float16_on_gpu_and_float32_on_cpu() -> None:
    from trainer.machine import resolve_precision

    assert resolve_precision("auto", num_gpus=0) == "float32"
    assert resolve_precision("auto", num_gpus=1) == "mixed_float16"
    assert resolve_precision("auto", num_gpus=8) == "mixed_float16"
    assert resolve_precision("mixed_bfloat16", num_gpus=0) == "mixed_bfloat16"
    assert resolve_precision("float32", num_gpus=4) == "float32"


def test_strategy_kind() -> None:
    from trainer.config import TrainingError
    from trainer.machine import choose_strategy_kind, is_chief

    assert choose_strategy_kind(0, None) == "default"
    assert choose_strategy_kind(1, None) == "default"
    assert choose_strategy_kind(2, None) == "mirrored"
    cluster = '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}'
    assert choose_strategy_kind(1, cluster) == "multi_worker"
    assert choose_strategy_kind(4, '{"cluster": {}}') == "mirrored"
    assert not is_chief(cluster) and is_chief(cluster.replace('"index": 1', '"index": 0')) and is_chief(None)
    with pytest.raises(TrainingError):
        choose_strategy_kind(0, "not json")


def test_config_checks_and_defaults() -> None:
    assert check(TrainConfig()) == []
    problems = check(TrainConfig(model="vgg", head="x", angles=[0, 0, 400], weights="imagenet", epochs=0))
    text = " ".join(problems)
    for expected in ("model 'vgg'", "head 'x'", "repeat", "0..359", "--weights", "epochs"):
        assert expected in text
    assert choose_preprocessing("mnist-cnn", "mnist", None) == "binarize"
    assert choose_preprocessing("mnist-cnn", "mnist", False) == "scale"
    assert choose_preprocessing("mnist-cnn", "street_view", None) == "scale"
    assert choose_preprocessing("resnet50", "mnist", True) == "caffe"
    assert subset_fraction(None, 100) == 1.0 and subset_fraction(0.25, 100) == 0.25
    assert subset_fraction(50, 200) == 0.25 and subset_fraction(500, 200) == 1.0


@pytest.mark.parametrize(
    ("model", "width", "expected"),
    [
        ("mnist-cnn-bn", 1.5, None),
        ("mnist-cnn-bn", 3.0, None),
        ("mnist-cnn-bn", 0.0, "--width must be a number above 0 and at most 3, not 0.0"),
        ("mnist-cnn-bn", float("nan"), "--width must be a number above 0"),
        ("mnist-cnn-bn", 3.5, "at most 3, not 3.5"),
        ("mnist-cnn", 2.0, "--width applies to mnist-cnn-bn, not mnist-cnn"),
        ("resnet50", 1.0, None),  # the default is no choice
    ],
)
def test_width_is_checked(model: str, width: float, expected: str | None) -> None:
    problems = " ".join(check(TrainConfig(model=model, width=width)))
    if expected is None:
        assert problems == ""
    else:
        assert expected in problems


@pytest.mark.parametrize(
    ("model", "dropout", "weight_decay", "expected"),
    [
        ("mnist-cnn-bn", 0.0, 0.0, None),
        ("mnist-cnn", 0.9, 0.5, None),
        ("mnist-cnn-bn", -0.1, 0.0, "--dropout must be a rate from 0 to 0.9, not -0.1"),
        ("mnist-cnn-bn", 0.95, 0.0, "--dropout must be a rate from 0 to 0.9, not 0.95"),
        ("mnist-cnn-bn", float("nan"), 0.0, "--dropout must be a rate from 0 to 0.9, not nan"),
        ("resnet50", 0.2, 0.0, "--dropout applies to mnist-cnn, mnist-cnn-bn, not resnet50"),
        ("resnet50", None, 0.05, None),  # weight decay applies to every model
        ("mnist-cnn-bn", None, -0.01, "--weight-decay must be a number from 0 up to"),
        ("mnist-cnn-bn", None, 1.0, "(not including) 1, not 1.0"),
        ("mnist-cnn-bn", None, float("inf"), "not inf"),
    ],
)
def test_dropout_and_weight_decay_are_checked(
    model: str, dropout: float | None, weight_decay: float, expected: str | None
) -> None:
    problems = check(TrainConfig(model=model, dropout=dropout, weight_decay=weight_decay))
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0]


# --- Architectures -------------------------------------------------------------------------------


def _config(**overrides) -> TrainConfig:
    values = {
        "image_size": [28, 28],
        "channels": 1,
        "bin_angles": list(ALL_BINS),
        "resolved_precision": "float32",
        "preprocessing": "scale",
    }
    values.update(overrides)
    return TrainConfig(**values)


def test_mnist_cnn_is_rotnets_architecture() -> None:
    import keras

    from trainer.models import build_model

    model = build_model(_config(preprocessing="binarize"), Head("classification", ALL_BINS))
    assert type(model.layers[1]).__name__ == "Preprocess" and model.layers[1].mode == "binarize"
    layers = [(type(layer).__name__, layer) for layer in model.layers[2:]]
    assert [name for name, _ in layers] == [
        "Conv2D",
        "Conv2D",
        "MaxPooling2D",
        "Dropout",
        "Flatten",
        "Dense",
        "Dropout",
        "Dense",
        "Activation",
    ]
    conv1, conv2 = layers[0][1], layers[1][1]
    assert (conv1.filters, conv1.kernel_size, conv1.padding) == (64, (3, 3), "valid")
    assert (conv2.filters, conv2.kernel_size) == (64, (3, 3))
    assert layers[2][1].pool_size == (2, 2)
    assert layers[3][1].rate == 0.25 and layers[6][1].rate == 0.25
    assert layers[5][1].units == 128 and layers[5][1].activation is keras.activations.relu
    assert layers[7][1].units == 360
    assert model.output_shape == (None, 360)
    # RotNet's parameter count for 28x28x1 -> 360: 640 + 36,928 + 1,179,776 + 46,440
    assert model.count_params() == 640 + 36_928 + 12 * 12 * 64 * 128 + 128 + 129 * 360


def test_output_layer_is_float32_under_mixed_precision_and_policy_restored() -> None:
    import keras
    import tensorflow as tf

    from trainer.models import build_model

    before = keras.config.dtype_policy().name
    model = build_model(
        _config(resolved_precision="mixed_float16"), Head("classification", (0, 90, 180, 270))
    )
    assert keras.config.dtype_policy().name == before
    assert model.get_layer("conv1").dtype_policy.name == "mixed_float16"
    assert model.get_layer("conv1").compute_dtype == "float16"
    assert model.get_layer("angle_output").compute_dtype == "float32"
    assert model.get_layer("preprocess").compute_dtype == "float32"
    assert model(tf.zeros((2, 28, 28, 1), tf.uint8)).dtype == tf.float32
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_backbones_take_grey_small_inputs() -> None:
    import tensorflow as tf

    from trainer.models import build_model

    for name in ("resnet50", "mobilenet-v3-small"):
        model = build_model(
            _config(model=name, weights="none", preprocessing="caffe"), Head("regression", ALL_BINS)
        )
        assert model.output_shape == (None, 2)
        assert model(tf.zeros((1, 28, 28, 1), tf.uint8)).shape == (1, 2)


def test_mnist_cnn_bn_is_the_documented_architecture() -> None:
    """trainer.models: 32-32 / pool / 64-64 / pool / 128, each conv 3x3 'same' without bias + BN + relu,
    flatten, dropout 0.15, dense 256 (no bias) + BN + relu, dropout 0.15, the head's dense layer."""
    from trainer.models import build_model

    model = build_model(_config(model="mnist-cnn-bn"), Head("circular-gaussian", ALL_BINS))
    layers = model.layers[2:]  # after the input and Preprocess layers
    described = []
    for layer in layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            assert (layer.kernel_size, layer.padding, layer.use_bias) == ((3, 3), "same", False), layer.name
            described.append(f"conv{layer.filters}")
        elif kind == "Dense":
            described.append(f"dense{layer.units}" + ("" if layer.use_bias else "-nobias"))
        elif kind == "Dropout":
            described.append(f"dropout{layer.rate}")
        elif kind == "MaxPooling2D":
            assert layer.pool_size == (2, 2)
            described.append("pool")
        elif kind == "BatchNormalization":
            described.append("bn")
        elif kind == "Activation":
            described.append(layer.get_config()["activation"])
        else:
            described.append(kind.lower())
    conv = ["bn", "relu"]
    assert described == [
        *["conv32", *conv, "conv32", *conv, "pool"],
        *["conv64", *conv, "conv64", *conv, "pool"],
        *["conv128", *conv],
        *["flatten", "dropout0.15", "dense256-nobias", "bn", "relu", "dropout0.15"],
        *["dense360", "softmax"],
    ]
    assert model.output_shape == (None, 360)
    # 28 px: two 2x2 poolings leave 7x7x128 features for the dense layer (the spatial layout is kept).
    assert model.get_layer("flatten").output.shape == (None, 7 * 7 * 128)


def test_mnist_cnn_bn_width_scales_every_layer() -> None:
    from trainer.models import build_model

    def counts(width: float) -> list[int]:
        model = build_model(_config(model="mnist-cnn-bn", width=width), Head("classification", ALL_BINS))
        return [
            getattr(layer, "filters", None) or layer.units
            for layer in model.layers
            if type(layer).__name__ in ("Conv2D", "Dense")
        ]

    assert counts(1.0) == [32, 32, 64, 64, 128, 256, 360]
    assert counts(1.5) == [48, 48, 96, 96, 192, 384, 360]  # the head keeps one output per angle
    assert counts(0.25) == [8, 8, 16, 16, 32, 64, 360]


def test_preprocess_layer_matches_the_numpy_core_and_survives_saving(tmp_path) -> None:
    import keras

    from pipeline import geometry
    from tests.factories import synthetic_image
    from trainer.models import Preprocess, build_model

    image = synthetic_image(2)
    image[0, :3, 0] = [25, 26, 255]  # either side of RotNet's 0.1 x 255 = 25.5 threshold
    model = build_model(_config(preprocessing="binarize"), Head("classification", ALL_BINS))
    binarized = model.get_layer("preprocess")(image[np.newaxis]).numpy()[0]
    np.testing.assert_array_equal(binarized, geometry.binarize(image))
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    assert isinstance(reloaded.get_layer("preprocess"), Preprocess)
    np.testing.assert_allclose(
        reloaded(image[np.newaxis]).numpy(), model(image[np.newaxis]).numpy(), atol=1e-6
    )


@pytest.mark.parametrize(("model", "default_rate"), [("mnist-cnn", 0.25), ("mnist-cnn-bn", 0.15)])
def test_dropout_sets_both_dropout_layers_and_defaults_to_the_models_own(
    model: str, default_rate: float
) -> None:
    from trainer.models import build_model

    head = Head("circular-gaussian", ALL_BINS)
    for dropout, expected in ((None, default_rate), (0.4, 0.4), (0.0, 0.0)):
        built = build_model(_config(model=model, dropout=dropout), head)
        rates = [layer.rate for layer in built.layers if type(layer).__name__ == "Dropout"]
        assert rates == [expected, expected]


def test_weight_decay_compiles_adamw_that_decays_kernels_only() -> None:
    """--weight-decay: AdamW, decaying every kernel and no batch-norm scale/offset or bias; without it
    plain Adam."""
    import contextlib

    import keras

    from trainer.train import _compiled_model

    class NoStrategy:
        def scope(self):
            return contextlib.nullcontext()

    head = Head("circular-gaussian", ALL_BINS)
    model = _compiled_model(_config(model="mnist-cnn-bn", weight_decay=0.1), head, NoStrategy())
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == pytest.approx(0.1)
    decayed = {
        variable.path for variable in model.trainable_variables if optimizer._use_weight_decay(variable)
    }
    kernels = {variable.path for variable in model.trainable_variables if variable.name == "kernel"}
    assert kernels and decayed == kernels  # 6 conv/dense kernels + the head's; no gamma, beta or bias
    plain = _compiled_model(_config(model="mnist-cnn-bn"), head, NoStrategy()).optimizer
    assert type(plain) is keras.optimizers.Adam


@pytest.mark.parametrize(
    ("model", "pool", "expected"),
    [
        ("mnist-cnn-bn", "blur", None),
        ("mnist-cnn", "blur", None),
        ("resnet50", "max", None),
        ("mnist-cnn-bn", "avg", "--pool must be one of max, blur, not 'avg'"),
        ("resnet50", "blur", "--pool blur applies to mnist-cnn, mnist-cnn-bn, not resnet50"),
    ],
)
def test_pool_is_checked(model: str, pool: str, expected: str | None) -> None:
    problems = check(TrainConfig(model=model, pool=pool))
    assert problems == ([] if expected is None else [expected])


@pytest.mark.parametrize("model", ["mnist-cnn", "mnist-cnn-bn"])
def test_blur_pooling_keeps_the_grid_and_blurs_with_fixed_weights(model: str, tmp_path) -> None:
    """--pool blur: the same feature sizes as max pooling (the dense layers unchanged), a binomial
    filter that training does not move and that sums to 1, and a model that saves and reloads."""
    import keras

    from trainer.models import build_model

    head = Head("circular-gaussian", ALL_BINS)
    plain = build_model(_config(model=model), head)
    blurred = build_model(_config(model=model, pool="blur"), head)
    assert [layer.output.shape for layer in plain.layers if layer.name.startswith(("flatten", "dense"))] == [
        layer.output.shape for layer in blurred.layers if layer.name.startswith(("flatten", "dense"))
    ]
    blurs = [layer for layer in blurred.layers if layer.name.endswith("_blur")]
    assert len(blurs) == (1 if model == "mnist-cnn" else 2)
    for layer in blurs:
        (kernel,) = layer.get_weights()
        assert not layer.trainable and layer.strides == (2, 2)
        np.testing.assert_allclose(kernel[:, :, 0, 0], np.outer([1, 2, 1], [1, 2, 1]) / 16)
        np.testing.assert_allclose(kernel.sum(axis=(0, 1)), 1.0)
    assert blurred.count_params() - plain.count_params() == sum(layer.count_params() for layer in blurs)
    assert all(weight.trainable is False for layer in blurs for weight in layer.weights)
    blurred.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(reloaded(images)), np.asarray(blurred(images)), atol=1e-6)


def test_blur_pooling_centers_each_output_on_max_poolings_window() -> None:
    """One bright pixel at (2k, 2k) (or 2k + 1): max pooling puts it in output k; blur pooling's peak is
    in output k too, so both see the image on one grid."""
    import keras

    from trainer.models import _pool

    for row in (6, 7):
        image = np.zeros((1, 14, 14, 1), np.float32)
        image[0, row, row, 0] = 1.0
        inputs = keras.Input((14, 14, 1))
        blur = keras.Model(inputs, _pool(inputs, "blur", "p"))
        maximum = keras.Model(inputs, _pool(inputs, "max", "q"))
        blurred = np.asarray(blur(image))[0, :, :, 0]
        assert np.asarray(maximum(image))[0, row // 2, row // 2, 0] == 1.0
        assert np.unravel_index(blurred.argmax(), blurred.shape) == (row // 2, row // 2)
        assert blurred.shape == (7, 7) and abs(blurred.sum() - 1.0) < 1e-6  # nothing lost at the center

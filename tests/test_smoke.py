import lowtf
import tensorflow as tf


def test_tiny_mlp_trains(binary_data):
    x, y = binary_data
    model = lowtf.mlp("tiny", num_classes=2, l2=1e-3, dropout=0.2, maxnorm=1.0)
    step = lowtf.TrainStep(
        model,
        tf.keras.optimizers.Adam(1e-2),
        data=lowtf.InMemoryBatches(x, y, 100),
    )
    first = float(step.run(5)["cross_entropy"])
    last = float(step.run(200)["cross_entropy"])
    assert last < 0.7 * first
    assert step.trace_count == 1

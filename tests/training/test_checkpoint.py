import keras
import numpy as np
import pytest

from imgclf.errors import CheckpointError
from imgclf.models.registry import create_model
from imgclf.run.folder import RunFolder
from imgclf.training.checkpoint import Stateful, TrainingCheckpoint, capture_state, restore_state


class Counter(Stateful):
    def __init__(self):
        self.count, self.weights = 0, [np.zeros(3)]

    def get_state(self):
        return {"count": self.count}, list(self.weights)

    def set_state(self, info, arrays):
        self.count, self.weights = info["count"], list(arrays)


def compiled(name="seed", size=8):
    keras.backend.clear_session()  # layer names restart, as in the fresh process that resumes a run
    model = create_model(name, (size, size, 3), 2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


def test_capture_and_restore_bring_back_model_optimizer_and_callbacks(tmp_path):
    keras.utils.set_random_seed(0)
    model = compiled()
    rng = np.random.default_rng(0)
    model.fit(rng.integers(0, 256, (16, 8, 8, 3)).astype("float32"), rng.integers(0, 2, 16), epochs=1, verbose=0)
    counter = Counter()
    counter.count, counter.weights = 7, [np.arange(3.0)]
    run = RunFolder(tmp_path)
    callback = TrainingCheckpoint(run, {"counter": counter})
    callback.set_model(model)
    callback.on_epoch_end(4)
    saved = [v.numpy().copy() for v in model.variables] + [v.numpy().copy() for v in model.optimizer.variables]

    fresh, restored = compiled(), Counter()
    assert restore_state(*run.read_checkpoint(), fresh, {"counter": restored}) == 5
    now = [v.numpy() for v in fresh.variables] + [v.numpy() for v in fresh.optimizer.variables]
    assert len(now) == len(saved)
    for a, b in zip(saved, now):
        np.testing.assert_array_equal(a, b)
    assert restored.count == 7 and restored.weights[0].tolist() == [0.0, 1.0, 2.0]


def test_a_checkpoint_of_another_model_is_refused():
    meta, arrays = capture_state(compiled(size=8), 1, {})
    with pytest.raises(CheckpointError, match="shape"):
        restore_state(meta, arrays, compiled(size=16), {})  # same layers, other Dense size
    with pytest.raises(CheckpointError, match="does not match the model"):
        restore_state(meta, arrays, compiled("fast-tiny", size=16), {})
    with pytest.raises(CheckpointError, match="no state for counter"):
        restore_state(meta, arrays, compiled(size=8), {"counter": Counter()})

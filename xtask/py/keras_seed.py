# Copied from the shared peer baselines (shared/peers/keras_seed.py): the seed's own Keras
# recipe, timed on random data with random weights. The finetune benchmark runs it
# in a throwaway venv (tensorflow-cpu) for a Keras figure measured in the same run.
"""The seed's own Keras program (VGG16 transfer learning), timed stage by stage on this machine.

Weights are random (weights=None): no hub is reachable here; speed does not depend on weight values.
Usage: python keras_seed.py N_IMAGES N_CLASSES  -> prints one JSON line of stage timings.
"""
import json, os, sys, time
import numpy as np
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf
from tensorflow.keras.applications import VGG16
from tensorflow.keras.layers import Dense, Flatten
from tensorflow.keras.models import Model, Sequential

n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
num_classes = int(sys.argv[2]) if len(sys.argv) > 2 else 5
rng = np.random.default_rng(0)
images = rng.uniform(0, 255, size=(n, 224, 224, 3)).astype("float32")
labels = tf.keras.utils.to_categorical(rng.integers(0, num_classes, n), num_classes)
out = {"framework": f"tensorflow {tf.__version__}", "threads": os.cpu_count(), "n": n}

base = VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
base.predict(images[:32], batch_size=32, verbose=0)  # warm-up
t = time.perf_counter(); feats = base.predict(images, batch_size=32, verbose=0); dt = time.perf_counter() - t
out["extract_img_per_s"] = n / dt

# the head alone on cached features (what a feature cache makes possible)
head = Sequential([tf.keras.Input(shape=feats.shape[1:]), Flatten(), Dense(1024, activation="relu"), Dense(num_classes, activation="softmax")])
head.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
head.fit(feats, labels, epochs=1, batch_size=32, verbose=0)  # warm-up
t = time.perf_counter(); head.fit(feats, labels, epochs=3, batch_size=32, verbose=0); dt = time.perf_counter() - t
out["head_samples_per_s"] = 3 * n / dt

# the seed's flow: frozen base + head, then fine-tune with block5 unfrozen
x = Flatten()(base.output); x = Dense(1024, activation="relu")(x)
model = Model(inputs=base.input, outputs=Dense(num_classes, activation="softmax")(x))
for layer in base.layers:
    layer.trainable = layer.name.startswith("block5")
model.compile(optimizer=tf.keras.optimizers.Adam(1e-5), loss="categorical_crossentropy", metrics=["accuracy"])
m = min(n, 64)
model.fit(images[:32], labels[:32], epochs=1, batch_size=32, verbose=0)  # warm-up
t = time.perf_counter(); model.fit(images[:m], labels[:m], epochs=1, batch_size=32, verbose=0); dt = time.perf_counter() - t
out["finetune_block5_img_per_s"] = m / dt
print(json.dumps(out))

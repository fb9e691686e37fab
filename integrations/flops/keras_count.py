"""Counts the Keras reference GPT (and CNN, and keras.applications' MobileNetV2 and ResNet50) on the backend of
`KERAS_BACKEND`; prints one JSON object.

Run as `KERAS_BACKEND=jax python integrations/flops/keras_count.py dense switch top2:dense_dispatch cnn`; used by the
Keras and cross-framework tests (one process per backend: Keras picks its backend at import).
"""

from __future__ import annotations

import json
import sys

from carbon_callbacks.flops import count
from carbon_callbacks.models.config import DENSE, SWITCH, TOP2

CONFIGS = {"dense": DENSE, "switch": SWITCH, "top2": TOP2}
#: keras.applications models counted at their published size (224 x 224, 1000 classes), built without weights.
APPLICATIONS = {
    "resnet50": lambda **kw: __import__("keras").applications.ResNet50(**kw),
    "mobilenetv2_224": lambda **kw: __import__("keras").applications.MobileNetV2(**kw),
}


def main(names: list[str]) -> None:
    import keras

    from carbon_callbacks.models.keras_gpt import build_gpt, random_batch

    out = {"backend": keras.backend.backend(), "counts": {}}
    for name in names:
        if name in APPLICATIONS:  # at 224 x 224 with 1000 classes: the forward alone, and the training step
            import numpy as np

            keras.utils.set_random_seed(0)
            model = APPLICATIONS[name](weights=None)
            images = np.zeros((1, 224, 224, 3), "float32")
            forward = count(lambda x, model=model: model(x, training=False), images, framework="keras")
            step = count(model, images)
            out["counts"][name] = {**step.to_dict(), "forward": forward.executed,
                                   "params": int(model.count_params())}
            continue
        if name == "mobilenetv2":  # a model nobody here wrote: keras.applications, no weights downloaded
            keras.utils.set_random_seed(0)
            model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35)
            import numpy as np

            result = count(model, np.zeros((2, 32, 32, 3), "float32"))
            out["counts"][name] = {**result.to_dict(), "params": int(model.count_params())}
            continue
        if name == "cnn":
            from carbon_callbacks.models.cnn_config import CNN
            from carbon_callbacks.models.keras_cnn import build_cnn
            from carbon_callbacks.models.keras_cnn import random_batch as cnn_batch

            model = build_cnn(CNN)
            result = count(model, cnn_batch(CNN))
            out["counts"][name] = {**result.to_dict(), "params": sum(int(keras.ops.size(v)) for v in model.weights)}
            continue
        base, _, impl = name.partition(":")
        cfg = CONFIGS[base].with_(moe_implementation=impl) if impl else CONFIGS[base]
        model = build_gpt(cfg)
        tokens, _ = random_batch(cfg)
        result = count(model, tokens)
        params = sum(int(keras.ops.size(v)) for v in model.weights)
        out["counts"][name] = {**result.to_dict(), "params": params}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])

"""The model server of one deployment replica: a TensorFlow SavedModel behind KServe's Python
`ModelServer` (Open Inference Protocol v2 and the v1 predict protocol).

Runs in the serving virtual environment (`.venv-serving`, kserve + TensorFlow), not in the
platform's: it is started as a file (`python kserve_server.py`), imports nothing of `mlp`, and
is configured by environment variables:

    MLP_MODEL_NAME   the model's name (the name in /v1/models/<name> and /v2/models/<name>)
    MLP_MODEL_DIR    the SavedModel folder (a registry version)
    MLP_HTTP_PORT    the loopback port to listen on

`python kserve_server.py --inspect DIR` prints the SavedModel's serving signature as JSON
instead (the registry records it at registration), or exits 2 with the reason.

Requests are checked against the signature before TensorFlow sees them: a missing or unknown
input, a wrong datatype or a wrong shape is a 400 naming the input.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Any

SIGNATURE_KEY = "serving_default"
# Open Inference Protocol datatypes <-> TensorFlow dtype names.
V2_TYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "string",
}
TF_TO_V2 = {v: k for k, v in V2_TYPES.items()}


def signature_of(loaded: Any) -> dict[str, Any]:
    """{"inputs": {name: {"dtype", "shape"}}, "outputs": {...}} of the serving signature."""
    sig = loaded.signatures[SIGNATURE_KEY]
    inputs = {
        name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
        for name, spec in sig.structured_input_signature[1].items()
    }
    outputs = {
        name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
        for name, spec in sig.structured_outputs.items()
    }
    return {"key": SIGNATURE_KEY, "inputs": inputs, "outputs": outputs}


def inspect(path: str) -> int:
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        print(f"{path} is not a SavedModel: it has no saved_model.pb", file=sys.stderr)
        return 2
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:
        print(f"TensorFlow cannot load the SavedModel in {path}: {e}", file=sys.stderr)
        return 2
    if SIGNATURE_KEY not in loaded.signatures:
        print(
            f"the SavedModel in {path} has no {SIGNATURE_KEY!r} signature (it has: "
            f"{', '.join(loaded.signatures) or 'none'}); export it with a serving signature",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(signature_of(loaded)))
    return 0


def check_array(name: str, array: Any, spec: dict[str, Any]) -> Any:
    """`array` as the signature's dtype and shape, or InvalidInput naming the input."""
    import numpy as np
    from kserve.errors import InvalidInput

    want = spec["dtype"]
    try:
        if want == "string":
            out = np.asarray(array, dtype=object)
        else:
            raw = np.asarray(array)
            if raw.dtype == object or raw.dtype.kind in "US":
                raise ValueError(f"got {raw.dtype.kind!r} values")
            out = raw.astype(want)
            if np.dtype(want).kind in "iu" and raw.dtype.kind == "f" and not np.array_equal(
                out, raw
            ):
                raise ValueError("got fractional numbers")
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidInput(f"input {name!r}: expected dtype {want}: {e}") from None
    shape = spec["shape"]
    if out.ndim != len(shape) or any(
        d is not None and d != got for d, got in zip(shape, out.shape, strict=False)
    ):
        expected = "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
        raise InvalidInput(
            f"input {name!r}: expected shape {expected}, got {list(out.shape)}"
        )
    return out


def check_names(given: set[str], inputs: dict[str, Any]) -> None:
    from kserve.errors import InvalidInput

    missing = sorted(set(inputs) - given)
    unknown = sorted(given - set(inputs))
    if unknown:
        raise InvalidInput(
            f"input {unknown[0]!r} is not in the model's signature (inputs: "
            f"{', '.join(sorted(inputs))})"
        )
    if missing:
        raise InvalidInput(f"input {missing[0]!r} is missing (inputs: {', '.join(sorted(inputs))})")


def v1_arrays(payload: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """Named arrays of a v1 request: {"instances": [{name: value}, ...]} (rows), or
    {"inputs": {name: batch}} (columns); a single-input model also takes plain instances."""
    from kserve.errors import InvalidInput

    if isinstance(payload.get("inputs"), dict):
        columns = payload["inputs"]
        check_names(set(columns), inputs)
        return {n: check_array(n, columns[n], inputs[n]) for n in inputs}
    instances = payload.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(
            'expected {"instances": [...]} (a non-empty list) or {"inputs": {name: [...]}}'
        )
    if all(isinstance(i, dict) for i in instances):
        names = set(instances[0])
        for i in instances:
            if set(i) != names:
                check_names(set(i), inputs)
        check_names(names, inputs)
        return {n: check_array(n, [i[n] for i in instances], inputs[n]) for n in inputs}
    if len(inputs) != 1:
        raise InvalidInput(
            f"this model has several inputs ({', '.join(sorted(inputs))}): send instances "
            "as objects {name: value}"
        )
    (name,) = inputs
    return {name: check_array(name, instances, inputs[name])}


def build_model(name: str, path: str) -> Any:
    import numpy as np
    import tensorflow as tf
    from kserve import InferOutput, InferRequest, InferResponse, Model
    from kserve.errors import InvalidInput

    class SavedModel(Model):
        def __init__(self) -> None:
            super().__init__(name)
            self.loaded = tf.saved_model.load(path)
            self.fn = self.loaded.signatures[SIGNATURE_KEY]
            self.signature = signature_of(self.loaded)
            self.ready = True

        def run(self, arrays: dict[str, Any]) -> dict[str, Any]:
            feeds = {
                n: tf.constant(a, dtype=self.signature["inputs"][n]["dtype"])
                for n, a in arrays.items()
            }
            return {k: v.numpy() for k, v in self.fn(**feeds).items()}

        async def predict(
            self, payload: Any, headers: Any = None, response_headers: Any = None
        ) -> Any:
            inputs = self.signature["inputs"]
            if isinstance(payload, InferRequest):
                given = {i.name for i in payload.inputs}
                check_names(given, inputs)
                arrays = {}
                for i in payload.inputs:
                    want = TF_TO_V2.get(inputs[i.name]["dtype"])
                    if i.datatype != want:
                        raise InvalidInput(
                            f"input {i.name!r}: expected datatype {want}, got {i.datatype}"
                        )
                    arrays[i.name] = check_array(i.name, i.as_numpy(), inputs[i.name])
                result = self.run(arrays)
                outputs = []
                for out_name, value in sorted(result.items()):
                    out = InferOutput(
                        name=out_name, shape=list(value.shape),
                        datatype=TF_TO_V2.get(value.dtype.name, "FP32"),
                    )
                    out.set_data_from_numpy(value, binary_data=False)
                    outputs.append(out)
                return InferResponse(
                    model_name=name, infer_outputs=outputs,
                    response_id=payload.id or str(uuid.uuid4()),
                )
            if not isinstance(payload, dict):
                raise InvalidInput("expected a JSON object")
            result = self.run(v1_arrays(payload, inputs))
            if len(result) == 1:
                return {"predictions": next(iter(result.values())).tolist()}
            batch = len(next(iter(result.values())))
            return {
                "predictions": [
                    {k: np.asarray(v[row]).tolist() for k, v in result.items()}
                    for row in range(batch)
                ]
            }

    return SavedModel()


def loopback_only() -> None:
    """KServe's REST server listens on 0.0.0.0; a deployment is reached only through the
    hub's proxy and the platform's router (which authorize), so it listens on loopback."""
    import uvicorn

    init = uvicorn.Config.__init__

    def loopback(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = "127.0.0.1"
        init(self, app, *args, **kwargs)

    uvicorn.Config.__init__ = loopback


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--inspect":
        return inspect(sys.argv[2])
    name, path = os.environ["MLP_MODEL_NAME"], os.environ["MLP_MODEL_DIR"]
    port = int(os.environ["MLP_HTTP_PORT"])
    # kserve parses its own flags from sys.argv when imported: give it none of ours.
    sys.argv = sys.argv[:1]
    loopback_only()
    from kserve import ModelServer

    model = build_model(name, path)
    print(f"mlp: model {name} loaded from {path}; serving on 127.0.0.1:{port}", flush=True)
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())

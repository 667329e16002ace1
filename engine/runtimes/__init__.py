"""The runtimes a compressed model is measured and shipped in, one registered `Runtime` per module.

Importing this package registers them in `engine.core.axes.RUNTIMES` (a new runtime: a module here and one
line below). None of them loads torch at import.
"""
from engine.runtimes import eager, compiled, onnx, openvino  # noqa: F401, I001  (each registers its runtime, in this order)
from engine.core.axes import RUNTIMES

# What building each runtime's artifact involves: said beside `prepare_s` wherever it is shown.
PREPARE = {name: rt.prepares for name, rt in RUNTIMES.items() if rt.prepares}

"""Runtimes a compressed model can be measured and shipped in, beside eager PyTorch."""

# What building each runtime's artifact involves: said beside `prepare_s` wherever it is shown.
PREPARE = {"onnxruntime": "ONNX export and quantization", "compile": "torch.compile (inductor)"}

"""Export: a finished run's model as a deployable file, dense for the original class (dense.py) or ONNX as
it is (onnx.py), with onnxruntime latency (latency.py); run.py is the `laser-tool export` command's work."""

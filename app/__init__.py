"""ortserve: a model-serving REST microservice for ONNX models."""

__version__ = "0.1.0"

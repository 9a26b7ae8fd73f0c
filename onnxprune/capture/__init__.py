"""The capture stage: onnxruntime sessions and streaming second-order statistics of the consumers' inputs."""

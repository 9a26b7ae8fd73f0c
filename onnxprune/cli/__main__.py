"""`python -m onnxprune.cli`: the same command as `onnxprune`."""
from . import main

main()

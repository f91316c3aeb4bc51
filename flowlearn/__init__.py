"""flowlearn: online learning from a live stream, served within a second.

The Flink-free library: learning core, binary codec, predictor and command line.
"""

__version__ = "0.1.0"

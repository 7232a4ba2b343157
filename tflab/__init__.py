"""tflab: a real TensorFlow GPU lab on AWS, run and served with one command each."""

__version__ = "0.1.0"

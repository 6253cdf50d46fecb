"""dlenv: build, test and publish a family of GPU-ready deep-learning images."""

__version__ = "0.1.0"

"""mirror-py: run a local Python process in the context of a Kubernetes pod."""

__version__ = "0.1.0"

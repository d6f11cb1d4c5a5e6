"""nas: parameter-budget neural architecture search for CIFAR-100."""

__version__ = "0.1.0"

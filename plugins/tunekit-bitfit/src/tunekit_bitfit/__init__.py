"""tunekit-bitfit: the BitFit strategy and a ShareGPT dataset adapter for tunekit."""

__version__ = "0.1.0"

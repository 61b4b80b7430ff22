"""plvm — tuning-free personalization of large vision-language models (PLVM, CVPRW 2025)."""

__version__ = "0.1.0"

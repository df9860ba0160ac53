"""The service core: admission, the dynamic batcher, weight updates and their gate (torch-free)."""

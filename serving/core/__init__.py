"""The service core (torch-free): admission, the dynamic batcher, weight updates."""

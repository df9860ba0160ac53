"""Silence one TorchRec/torch.fx warning that every forward would print otherwise."""

import logging


def quiet_torch_logs() -> None:
    # TorchRec calls torch.fx's is_fx_tracing(), which logs a deprecation note per process;
    # it says nothing about serving and buries real errors in the rank logs.
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)

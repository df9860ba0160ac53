"""The distributed engine: TorchRec DistributedModelParallel rank processes (gloo or NCCL)."""

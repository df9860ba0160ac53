"""The local engine: one process drives every rank's FBGEMM kernels, with no collective on the
request path (TorchRec's own inference design: input dist = copy the ids to each shard's
device, output dist + stitch = write each shard's columns straight into the answer)."""

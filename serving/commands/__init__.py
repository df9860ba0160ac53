"""The seqserve command and its verbs."""

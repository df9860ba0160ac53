"""The sharded engine: rank processes holding a DMP-sharded EmbeddingCollection."""

"""The models prerank trains: the joint two-tower student and MMoE teacher over shared embeddings."""

"""Keras layers of the models: the feature encoder and its shared embedding tables, pooling, the student's
towers and similarity forms, the teacher's MMoE and target attention. Each takes explicit arguments
(documented where declared) and, where they are plain values, has `get_config`."""

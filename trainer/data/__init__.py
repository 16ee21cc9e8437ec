"""Reading data: the tf.data pipeline, record origins, file probes, corrupt-record handling, example
writers, the item catalog, `convert/` (a team's raw tables -> partitions) and `datasets/` (KuaiRand,
synthetic data).

`make_pipeline(spec, files, InputConfig(...))` (`trainer.data.pipeline`) is the
entry point: files -> batches of raw columns, labels, weights and groups.
"""

"""The TF Serving deployment: `models.config`, batching parameters and a Dockerfile (files beside this one),
and `config`, which parses them with TF Serving's own messages."""

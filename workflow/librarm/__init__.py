"""librarm: the Libra reward-model pipeline (arXiv 2507.21645) as a library.

Every Snakemake rule calls one stage function from this package; the modules avoid heavy
imports at module level so that `import librarm.<module>` stays fast and works without vLLM.
"""

__version__ = "0.1.0"

"""Repository-wide pytest configuration.

Fixes the hash seed for every process pytest starts, in particular the Jupyter
kernels that nbval launches to re-execute the book's notebooks: they inherit
this process's environment, so set-iteration order and the like are
reproducible between the committed outputs and the test run.
"""

import os

os.environ["PYTHONHASHSEED"] = "0"

"""Former name of `keras_resume.runs` (0.1): `keras_resume.inspect` is that module.

Kept because README 0.1 documented `kr.inspect.load_model(...)`; new code
imports `keras_resume.runs`.
"""

import sys

from keras_resume import runs

sys.modules[__name__] = runs

"""Former name of `keras_resume.multiprocess` (0.1): `keras_resume.processes` is that module.

Kept because README 0.1 documented `keras_resume.processes.RESTORE_TIMEOUT_S`;
setting it through either name sets the same value.
"""

import sys

from keras_resume import multiprocess

sys.modules[__name__] = multiprocess

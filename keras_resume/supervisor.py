"""The path `keras_resume.supervisor` of `keras_resume.supervise`, kept for
`python -m keras_resume.supervisor` and `from keras_resume import supervisor`."""

import sys

from keras_resume import supervise
from keras_resume.supervise import *  # noqa: F403 - the same public names

__all__ = supervise.__all__

if __name__ == "__main__":
    sys.exit(supervise.main())

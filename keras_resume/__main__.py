"""`python -m keras_resume`: the `keras-resume` command line (see `keras_resume.cli`)."""

import sys

from keras_resume.cli import main

if __name__ == "__main__":
    sys.exit(main())

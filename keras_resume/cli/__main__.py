"""`python -m keras_resume.cli`: the `keras-resume` command line, as `python -m keras_resume`."""

import sys

from keras_resume.cli.entry import main

if __name__ == "__main__":
    sys.exit(main())

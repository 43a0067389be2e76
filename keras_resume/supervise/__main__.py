"""`python -m keras_resume.supervise`: `keras-resume run` on its own (standard library only)."""

import sys

from keras_resume.supervise.command_line import main

if __name__ == "__main__":
    sys.exit(main())

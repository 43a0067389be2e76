"""The path `keras_resume.guard` of `keras_resume.supervise.guard`, the process between
supervisor and command (the supervisor starts that file, not this one)."""

import sys

from keras_resume.supervise.guard import *  # noqa: F403 - the same public names
from keras_resume.supervise.guard import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

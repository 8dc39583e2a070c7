"""`python -m keras_rprop_cli`: the `keras-rprop` command."""

import sys

from keras_rprop_cli import main

sys.exit(main())

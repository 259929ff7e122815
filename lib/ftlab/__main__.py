import sys

from ftlab.runner.cli import main

sys.exit(main())

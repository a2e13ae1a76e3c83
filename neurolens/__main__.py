import sys

from neurolens.cli import main

sys.exit(main())

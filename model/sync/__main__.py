import sys

from model.sync.cli import main

sys.exit(main())

import sys

from vimw.cli.main import main

sys.exit(main())

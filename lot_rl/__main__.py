import sys

from lot_rl.cli import main

sys.exit(main())

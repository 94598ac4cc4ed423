import sys

from agent_passport.cli import main

sys.exit(main())

"""``python -m voicebot``."""

import sys

from .cli import main

sys.exit(main())

"""`python -m codexlm.codeeval samples.jsonl`: score completions (codexlm.codeeval.scoring)."""

import sys

from codexlm.codeeval.scoring import main

sys.exit(main())

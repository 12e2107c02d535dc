import sys

from codellama_hf.cli import main

sys.exit(main())

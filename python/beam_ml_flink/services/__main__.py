import sys

from beam_ml_flink.services.command import main

sys.exit(main())

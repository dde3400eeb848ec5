"""``python -m whisper_t5x.app.serving [flags]`` (same as ``whisper-t5x serve``)."""

import sys

from whisper_t5x.app.serving import main

if __name__ == "__main__":
    sys.exit(main(["whisper-t5x serve"] + sys.argv[1:]))

"""The sweep as a plain script, for `ray submit cluster.yaml search/submit.py -- CONFIG [--resume]`:
Ray runs `python search/submit.py CONFIG ...` on the head node, where augtune is installed
(configs/cluster.yaml's setup_commands) and imported as `augtune.search`: no path edits. The same as `augtune sweep CONFIG ...`."""
import sys

from augtune.search.cli import main

if __name__ == "__main__":
    sys.argv.insert(1, "sweep")  # then read as the command line, as `augtune sweep ...` is
    raise SystemExit(main())

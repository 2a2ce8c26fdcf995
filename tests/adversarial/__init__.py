"""An adversarial corpus of bad inputs for every command and file format, and a harness
that runs each in a forked child: one line, the right exit code, no traceback, no hang,
and nothing applied to a chip before the refusal."""

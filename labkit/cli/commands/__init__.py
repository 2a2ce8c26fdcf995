"""One module per ``labkit`` sub-command (``sim_serve`` is ``labkit sim-serve``)."""

"""pyserial URL handler package of labkit's emulators (``labkitemu://``)."""

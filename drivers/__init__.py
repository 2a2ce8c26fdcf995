"""The silicon side of labkit: the test-board protocol and driver, SCPI instrument drivers
and SiliconBackend, which composes them into an ArrayBackend."""

"""The emulated side: virtual silicon, EmulatedArray, board firmware and SCPI emulators."""

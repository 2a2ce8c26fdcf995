"""Internal units of the model and the tile physics (one definition for all of labkit's
physics code): currents in nA, time in us, charge in fC (= nA us), capacitance in fF.
Each constant is the SI value of one internal unit; divide an SI value by it to convert."""

NA = 1e-9  #: A per nA
US = 1e-6  #: s per us
FC = 1e-15  #: C per fC
FF = 1e-15  #: F per fF

__all__ = ["NA", "US", "FC", "FF"]

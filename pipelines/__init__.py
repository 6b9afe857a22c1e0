"""Engine drivers (Beam, the plain core loop), sources, sinks and the command line."""

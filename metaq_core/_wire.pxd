# The compiled frame decoder; see _wire.pyx.

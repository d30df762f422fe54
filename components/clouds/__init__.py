"""One module per platform (<platform>.py: its resources) with its pure traits record beside it
(<platform>_traits.py); registry.py lists them. Importing this package imports no provider SDK."""

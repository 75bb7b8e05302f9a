"""Project package of the pytest-djasync demo: settings, URLconf and server entry points."""

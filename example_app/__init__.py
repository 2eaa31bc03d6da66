"""A small bindcar-like DNS zone API, protected by flask-bindcar. See ``app.py`` and ``demo.py``."""

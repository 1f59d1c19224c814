"""Build hook for the one optional native piece: ``filterdns.serve._mmsg`` (Linux recvmmsg and
sendmmsg for the UDP transport). Everything else is in pyproject.toml.

``optional=True``: where it cannot be built (no C compiler, as in the slim Docker image, or not
Linux) pip installs filterdns without it and the UDP transport uses its pure-Python path.
"""

import sys

from setuptools import Extension, setup

ext = []
if sys.platform.startswith("linux"):
    ext.append(Extension("filterdns.serve._mmsg", ["filterdns/serve/_mmsg.c"], optional=True))

setup(ext_modules=ext)

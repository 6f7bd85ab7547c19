"""The built-in parts. Each module is a plugin, registered exactly like a third-party one.

Core code never imports these modules: it asks the registry (see :mod:`tunekit.plugins`).
"""

"""`make demo`: the whole pipeline on throwaway servers (python -m sync.demo --help).

Importing anything here before bootstrap loads only the standard library: the demo starts under the
system python3 and installs what is missing (the venv included) before anything else is imported.
"""
